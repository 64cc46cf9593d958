# Sourced by scripts/image and scripts/release. The caller defines die().

need() {  # need cmd:package ...: installs what is missing from Debian's packages, or fails
  local missing=() pair
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}"); done
  [ ${#missing[@]} -eq 0 ] && return
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1; apt-get install -y -q "${missing[@]}" >/dev/null; } \
    || die "cannot install ${missing[*]} with apt-get"
}
