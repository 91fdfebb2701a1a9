#!/bin/bash
# Fetch mkosi 25.3 from Debian trixie into a private tools folder, without touching
# the system's apt sources (Debian 12 ships mkosi 14, PyPI has none).
# Usage: scripts/fetch-mkosi.sh TOOLS_DIR
set -euo pipefail
tools=${1:?usage: fetch-mkosi.sh TOOLS_DIR}
want=25.3
if [ -f "$tools/mkosi/.version" ] && [ "$(cat "$tools/mkosi/.version")" = "$want" ]; then
    exit 0
fi
apt_dir="$tools/apt-trixie"
mkdir -p "$apt_dir/sources" "$apt_dir/lists/partial" "$apt_dir/archives/partial"
cat > "$apt_dir/sources/trixie.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main contrib non-free non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt_dir/sources"
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives"
      -o "Dir::State::Status=/dev/null" -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
# trixie's Release is signed with keys newer than bookworm's keyring may hold: fall back to
# an unauthenticated list fetch only if the keyring lacks them is NOT done; we need the key.
apt-get "${opts[@]}" -qq update
cd "$apt_dir/archives"
apt-get "${opts[@]}" -qq download "mkosi=$want*" 
deb=$(ls "$apt_dir"/archives/mkosi_"$want"*.deb | head -n1)
rm -rf "$tools/mkosi.tmp" && mkdir -p "$tools/mkosi.tmp"
dpkg -x "$deb" "$tools/mkosi.tmp"
echo "$want" > "$tools/mkosi.tmp/.version"
rm -rf "$tools/mkosi" && mv "$tools/mkosi.tmp" "$tools/mkosi"
echo "mkosi $want unpacked into $tools/mkosi"
