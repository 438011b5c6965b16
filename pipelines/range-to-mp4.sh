#!/usr/bin/env bash
# A time range of a stream saved to an MP4 file, without re-encoding.
# Needs: FROM and TO (epoch seconds, producer time), OUT (default clip.mp4).
source "$(dirname "$0")/common.sh"
need_element matroskademux mp4mux
: "${FROM:?set FROM to the range start, epoch seconds}"
: "${TO:?set TO to the range end, epoch seconds}"
run -e kvssrc stream-name="${STREAM:-webcam}" start-selector=producer-timestamp \
  start-timestamp="$FROM" end-timestamp="$TO" $KVS_PROPS ! \
  matroskademux ! h264parse ! mp4mux ! filesink location="${OUT:-clip.mp4}"
