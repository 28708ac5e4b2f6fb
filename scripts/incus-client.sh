#!/usr/bin/env bash
# Prints the path of the real incus CLI (Debian trixie's incus-client package), fetching the
# package once into the cache. Only the trixie package list is used for this one download;
# the host's apt configuration is left as it is.
set -euo pipefail
cache=${CAIRN_CACHE:-/var/cache/cairn}/incus-client
bin=$cache/root/usr/bin/incus
if [ ! -x "$bin" ]; then
  mkdir -p "$cache/lists/partial" "$cache/debs" "$cache/root"
  uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 | awk '{print $2}')
  [ -n "$uri" ] || uri=$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | grep -v security | head -1 | awk '{print $2}')
  [ -n "$uri" ] || uri=http://deb.debian.org/debian
  printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" > "$cache/trixie.sources"
  opts=(-o "Dir::Etc::SourceList=$cache/trixie.sources" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$cache/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
  apt-get "${opts[@]}" update -qq >/dev/null
  (cd "$cache/debs" && apt-get "${opts[@]}" download incus-client >/dev/null)
  dpkg-deb -x "$cache"/debs/incus-client_*.deb "$cache/root"
fi
echo "$bin"
