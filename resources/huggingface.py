"""Where releases go on the Hugging Face Hub. With `repo_id` empty, shards, index and card stay in the store."""

import dagster as dg
from pydantic import Field

from emilia_publish.hub import HubTarget


class HuggingFaceResource(dg.ConfigurableResource):
    repo_id: str = Field(default="", description="HF_REPO_ID: the dataset repo; empty = no upload.")
    token: str = Field(default="", description="HF_TOKEN, read through dg.EnvVar; never logged.")
    endpoint: str = Field(default="", description="HF_ENDPOINT; empty = huggingface.co.")
    private: bool = Field(default=True, description="Visibility when the repo is created.")
    license: str = Field(default="cc-by-nc-4.0", description="Licence in the dataset card (Emilia's).")
    max_files_per_commit: int = Field(default=50, description="Files per Hub commit (commit rate limits).")
    test_release: bool = Field(default=False, description="HF_TEST_RELEASE=1: this is a test release, which may hold "
                               "output of random-weight models (`models tiny`); its card says so.")

    def target(self) -> HubTarget | None:
        if not self.repo_id:
            return None
        return HubTarget(repo_id=self.repo_id, token=self.token or None, endpoint=self.endpoint or None,
                         private=self.private)
