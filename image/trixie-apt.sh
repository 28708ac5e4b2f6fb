#!/usr/bin/env bash
# apt against Debian trixie in a private state directory (the host stays on bookworm):
#   trixie-apt.sh update | depends PKG | download PKG DIR
set -euo pipefail
c=${CAIRN_TRIXIE_APT:-/var/cache/cairn/trixie-apt}
mkdir -p "$c/lists/partial" "$c/cache/archives/partial"
uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 | awk '{print $2}')
uri=${uri:-http://deb.debian.org/debian}
printf "Types: deb\nURIs: %s\nSuites: trixie\nComponents: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n" "$uri" > "$c/trixie.sources"
A=(-o "Dir::Etc::SourceList=$c/trixie.sources" -o Dir::Etc::SourceParts=/dev/null
   -o "Dir::State::Lists=$c/lists" -o "Dir::Cache=$c/cache")
case ${1:-} in
  update)
    # Refresh at most every 6 hours.
    if [ -z "$(find "$c/lists" -name '*_Packages' -mmin -360 2>/dev/null | head -1)" ]; then
      apt-get "${A[@]}" update -qq >/dev/null
    fi;;
  depends) apt-cache "${A[@]}" show "$2" | sed -n 's/^Depends: //p' | head -1;;
  download) (cd "$3" && apt-get "${A[@]}" download "$2" >/dev/null);;
  *) echo "usage: $0 update | depends PKG | download PKG DIR" >&2; exit 2;;
esac
