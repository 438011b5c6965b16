# Sourced by the pipeline scripts. Points the elements at AWS or at kvs-local with the same settings:
#
#   KVS_ENDPOINT   unset: the AWS regional endpoint; e.g. http://127.0.0.1:4567 for a kvs-local server
#   AWS_REGION     the region (default us-west-2, as the C++ kvssink)
#   credentials    the standard AWS chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY [/ AWS_SESSION_TOKEN],
#                  AWS_PROFILE, SSO, instance roles... (kvs-local accepts the keys it was started with)
#   STREAM         the stream name (default: the script's own default)
#
# The plugin is taken from this checkout's target/release (or target/debug) unless GST_PLUGIN_PATH is set.
# shellcheck shell=bash
set -euo pipefail

_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${GST_PLUGIN_PATH:-}" ]; then
  for dir in "$_root/target/release" "$_root/target/debug"; do
    if [ -e "$dir/libgstkvs.so" ]; then
      export GST_PLUGIN_PATH="$dir"
      break
    fi
  done
fi
if ! gst-inspect-1.0 kvssink >/dev/null 2>&1; then
  echo "kvssink not found: build the plugin (cargo build --release) or set GST_PLUGIN_PATH to the folder of libgstkvs.so" >&2
  exit 1
fi

# Properties shared by kvssink and kvssrc.
KVS_PROPS="aws-region=${AWS_REGION:-us-west-2}${KVS_ENDPOINT:+ endpoint=$KVS_ENDPOINT}"

need_element() {
  local e
  for e in "$@"; do
    gst-inspect-1.0 "$e" >/dev/null 2>&1 || { echo "this pipeline needs the GStreamer element '$e'" >&2; exit 1; }
  done
}

run() {
  echo "+ gst-launch-1.0 $*" >&2
  exec gst-launch-1.0 "$@"
}
