#!/usr/bin/env bash
# Regenerate the synthetic sample "podcast episodes" in this directory.
#
# Requires espeak-ng, sox and ffmpeg (with libmp3lame). Everything is rebuilt
# from scratch; intermediate WAVs live in a temp dir that is removed on exit.
# Output: 24 kHz mono 48 kbit/s CBR MP3 files next to this script.
#
# Usage: bash samples/make_samples.sh   (works from any working directory)
set -euo pipefail

OUT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

RATE=24000
BITRATE=48k

for tool in espeak-ng sox soxi ffmpeg ffprobe; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

# sox -R: repeatable mode (fixed seeds for dither / noise generators).
SOX=(sox -R -q)
FMT=(-r "$RATE" -c 1 -b 16)

n=0
# newpart: set $NEXT to a fresh temp WAV path (no subshell, so the counter sticks)
newpart() { n=$((n + 1)); printf -v NEXT '%s/part_%04d.wav' "$TMP" "$n"; }

# tts VOICE SPEED PITCH TEXT OUT
# Synthesize one sentence, resample to $RATE mono, trim espeak's own leading and
# trailing silence (so the pauses we insert are the real ones) and peak-normalize.
tts() {
    local voice=$1 speed=$2 pitch=$3 text=$4 out=$5
    espeak-ng -v "$voice" -s "$speed" -p "$pitch" -w "$TMP/raw.wav" "$text"
    "${SOX[@]}" "$TMP/raw.wav" "${FMT[@]}" "$out" \
        silence 1 0.01 0.05% reverse silence 1 0.01 0.05% reverse norm -3
}

# sil SECONDS OUT  -- true digital silence
sil() { "${SOX[@]}" -n "${FMT[@]}" "$2" trim 0 "$1"; }

# to_mp3 IN.wav OUT.mp3  -- bit-exact flags + stripped metadata for reproducibility
to_mp3() {
    ffmpeg -nostdin -hide_banner -loglevel error -y -i "$1" \
        -map_metadata -1 -fflags +bitexact -flags:a +bitexact \
        -ac 1 -ar "$RATE" -c:a libmp3lame -b:a "$BITRATE" "$2"
}

# ---------------------------------------------------------------------------
# 1. two_voices: alternating conversation, host (A) and guest (B)
# ---------------------------------------------------------------------------
VOICE_A=(en-us+m3 150 40)   # voice speed pitch
VOICE_B=(en-gb+f4 170 70)

TWO_VOICES=(
    "A|Welcome back to the show, everyone."
    "A|Today we are talking about old train stations."
    "B|Thanks for having me."
    "B|It is a topic I have been obsessed with for nearly ten years now."
    "A|So what got you started?"
    "A|Was there one station in particular that hooked you?"
    "B|There was a tiny brick building near my grandmother's village."
    "B|One summer the neighbours turned it into a cafe."
    "A|That sounds lovely."
    "A|But how do they actually pay for something like that?"
    "B|Mostly with local grants, a bit of crowd funding, and a lot of volunteer weekends."
    "A|And do people really show up, or is it just a nice idea on paper?"
    "B|They absolutely show up."
    "B|On market days the platform is packed all morning."
    "A|I love that."
    "A|We will be right back after a short break to hear more."
)
TURN_PAUSES=(0.6 0.8 0.55 0.7 0.65 0.9 0.6 0.75)
SENT_PAUSES=(0.35 0.5 0.4 0.45 0.3 0.55)

make_two_voices() {
    local parts=() prev="" tp=0 sp=0 entry spk text f
    for entry in "${TWO_VOICES[@]}"; do
        spk=${entry%%|*}
        text=${entry#*|}
        if [[ -n $prev ]]; then
            newpart; f=$NEXT
            if [[ $spk != "$prev" ]]; then
                sil "${TURN_PAUSES[tp % ${#TURN_PAUSES[@]}]}" "$f"; tp=$((tp + 1))
            else
                sil "${SENT_PAUSES[sp % ${#SENT_PAUSES[@]}]}" "$f"; sp=$((sp + 1))
            fi
            parts+=("$f")
        fi
        newpart; f=$NEXT
        if [[ $spk == A ]]; then
            tts "${VOICE_A[0]}" "${VOICE_A[1]}" "${VOICE_A[2]}" "$text" "$f"
        else
            tts "${VOICE_B[0]}" "${VOICE_B[1]}" "${VOICE_B[2]}" "$text" "$f"
        fi
        parts+=("$f")
        prev=$spk
    done
    local lead tail
    newpart; lead=$NEXT; sil 0.5 "$lead"
    newpart; tail=$NEXT; sil 0.5 "$tail"
    "${SOX[@]}" "$lead" "${parts[@]}" "$tail" "$TMP/two_voices.wav"
    to_mp3 "$TMP/two_voices.wav" "$OUT_DIR/two_voices.mp3"
}

# speak_block VOICE SPEED PITCH OUT PAUSE_LIST_NAME SENTENCE...
# One voice, one sentence per espeak call, explicit pauses between sentences.
# A sentence equal to "||" inserts a longer paragraph break (1.6 s).
speak_block() {
    local voice=$1 speed=$2 pitch=$3 out=$4 pname=$5
    shift 5
    local -n pauses=$pname
    local parts=() k=0 first=1 s f
    for s in "$@"; do
        if [[ $s == "||" ]]; then
            newpart; f=$NEXT; sil 1.6 "$f"; parts+=("$f"); first=1
            continue
        fi
        if [[ $first -eq 0 ]]; then
            newpart; f=$NEXT; sil "${pauses[k % ${#pauses[@]}]}" "$f"; parts+=("$f"); k=$((k + 1))
        fi
        newpart; f=$NEXT; tts "$voice" "$speed" "$pitch" "$s" "$f"; parts+=("$f")
        first=0
    done
    "${SOX[@]}" "${parts[@]}" "$out"
}

# ---------------------------------------------------------------------------
# 2. music_bed: one voice over a quiet synthetic chord bed (~15-20 dB below speech)
# ---------------------------------------------------------------------------
MUSIC_TEXT=(
    "Hello and welcome to Morning Notes, the podcast about the small habits that shape our days."
    "I am your host, and this week we are talking about breakfast."
    "Some people swear by a big meal before work, while others barely manage a cup of coffee."
    "We asked our listeners what they eat, and the answers were surprising."
    "More than half of you said toast, but one listener eats cold soup every single morning."
    "Stay with us, because after the break we will hear from a nutritionist about what actually matters."
)
MUSIC_PAUSES=(0.6 0.8 0.5 0.7)

dbl() { awk -v f="$1" 'BEGIN { printf "%.2f", f * 2 }'; }  # one octave up

make_music_bed() {
    speak_block en-us+m7 155 45 "$TMP/mb_speech_raw.wav" MUSIC_PAUSES "${MUSIC_TEXT[@]}"
    # 2 s music intro before speech, 2 s outro after it.
    "${SOX[@]}" "$TMP/mb_speech_raw.wav" "$TMP/mb_speech.wav" pad 2 2
    local total
    total=$(soxi -D "$TMP/mb_speech.wav")

    # One 8 s loop: C - Am - F - G, 2 s each; plucked triad plus a soft sine pad.
    local chords=("130.81 164.81 196.00" "110.00 130.81 164.81" "87.31 110.00 130.81" "98.00 123.47 146.83")
    local loop_parts=() c r t fi
    for c in "${chords[@]}"; do
        read -r r t fi <<<"$c"
        local pl pd ch
        newpart; pl=$NEXT; newpart; pd=$NEXT; newpart; ch=$NEXT
        "${SOX[@]}" -r 48000 -c 3 -n "${FMT[@]}" "$pl" \
            synth 2 pluck "$(dbl "$r")" pluck "$(dbl "$t")" pluck "$(dbl "$fi")" \
            remix - vol 0.5 fade 0 2 0.3
        "${SOX[@]}" -r "$RATE" -c 3 -n "${FMT[@]}" "$pd" \
            synth 2 sine "$r" sine "$t" sine "$fi" remix - tremolo 0.5 30 fade h 0.4 2 0.4 vol 0.5
        "${SOX[@]}" -m -v 1 "$pl" -v 1 "$pd" "$ch"
        loop_parts+=("$ch")
    done
    "${SOX[@]}" "${loop_parts[@]}" "$TMP/mb_loop.wav"
    # Repeat the loop to cover the speech, add a whisper of seeded pink noise,
    # peak-normalize, then drop it 24 dB (bed RMS ends up ~17 dB below speech RMS), with a fade in/out.
    local reps
    reps=$(awk -v d="$total" 'BEGIN { print int(d / 8) + 1 }')
    "${SOX[@]}" "$TMP/mb_loop.wav" "$TMP/mb_loop_rep.wav" repeat "$reps"
    "${SOX[@]}" -n "${FMT[@]}" "$TMP/mb_noise.wav" synth "$total" pinknoise vol 0.02
    "${SOX[@]}" -m -v 1 "$TMP/mb_loop_rep.wav" -v 1 "$TMP/mb_noise.wav" "$TMP/mb_bed_full.wav" \
        trim 0 "$total"
    "${SOX[@]}" "$TMP/mb_bed_full.wav" "$TMP/mb_bed.wav" norm -3 gain -24 fade t 1.5 "$total" 2
    "${SOX[@]}" -m -v 1 "$TMP/mb_speech.wav" -v 1 "$TMP/mb_bed.wav" "$TMP/music_bed.wav" norm -1
    to_mp3 "$TMP/music_bed.wav" "$OUT_DIR/music_bed.mp3"
}

# ---------------------------------------------------------------------------
# 3. long_silence: ~8 s speech, ~15 s digital silence, ~7 s speech
# ---------------------------------------------------------------------------
SIL_TEXT_1=(
    "Before we go any further, I want to check something with the engineer."
    "Can you hear me clearly on your side, or should I move closer to the microphone?"
)
SIL_TEXT_2=(
    "Sorry about that long pause, everyone."
    "We had a small technical problem, but we are back on track now."
)
SIL_PAUSES=(0.5)

make_long_silence() {
    speak_block en-gb+m2 160 50 "$TMP/ls_a.wav" SIL_PAUSES "${SIL_TEXT_1[@]}"
    speak_block en-gb+m2 160 50 "$TMP/ls_b.wav" SIL_PAUSES "${SIL_TEXT_2[@]}"
    local lead gap tail
    newpart; lead=$NEXT; sil 0.3 "$lead"
    newpart; gap=$NEXT; sil 15 "$gap"
    newpart; tail=$NEXT; sil 0.5 "$tail"
    "${SOX[@]}" "$lead" "$TMP/ls_a.wav" "$gap" "$TMP/ls_b.wav" "$tail" "$TMP/long_silence.wav"
    to_mp3 "$TMP/long_silence.wav" "$OUT_DIR/long_silence.mp3"
}

# ---------------------------------------------------------------------------
# 4. monologue: one voice, longer paragraph, sentence pauses + paragraph breaks
# ---------------------------------------------------------------------------
MONO_TEXT=(
    "When I first moved to the coast, I thought the sea would be the same every day."
    "I was completely wrong."
    "In the morning it is flat and silver, and the fishing boats slide out without a sound."
    "||"
    "By lunchtime the wind picks up, and the water turns a deep, restless green."
    "Children run along the sand, and the gulls start arguing over anything that looks like food."
    "||"
    "In the evening everything slows down again."
    "The light goes orange, then pink, and the lighthouse at the end of the harbour starts to blink."
    "I have watched that view almost every night for three years, and I still have not grown tired of it."
)
MONO_PAUSES=(0.55 0.7 0.45 0.8 0.6)

make_monologue() {
    speak_block en-us+f2 150 55 "$TMP/mono_speech.wav" MONO_PAUSES "${MONO_TEXT[@]}"
    "${SOX[@]}" "$TMP/mono_speech.wav" "$TMP/monologue.wav" pad 0.4 0.8
    to_mp3 "$TMP/monologue.wav" "$OUT_DIR/monologue.mp3"
}

rm -f "$OUT_DIR"/two_voices.mp3 "$OUT_DIR"/music_bed.mp3 \
      "$OUT_DIR"/long_silence.mp3 "$OUT_DIR"/monologue.mp3

make_two_voices
make_music_bed
make_long_silence
make_monologue

printf '%-20s %10s %10s\n' file duration_s bytes
for f in two_voices music_bed long_silence monologue; do
    p="$OUT_DIR/$f.mp3"
    d=$(ffprobe -v error -show_entries format=duration -of default=nw=1:nk=1 "$p")
    s=$(stat -c %s "$p")
    printf '%-20s %10.2f %10d\n' "$f.mp3" "$d" "$s"
done
du -cb "$OUT_DIR"/*.mp3 | tail -n 1
