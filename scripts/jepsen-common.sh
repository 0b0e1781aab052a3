# Sourced by the jepsen scripts of `make test`: skips (exit 0, with a message) unless root,
# installs nftables when missing, and sets CARGO and T (the cargo target directory).
# $1: what is being skipped, for the message.
if [ "$(id -u)" != 0 ]; then
    echo "$1: SKIPPED (needs root for network namespaces and nftables)"
    exit 0
fi
command -v nft >/dev/null || apt-get install -y nftables >/dev/null
CARGO=${CARGO:-cargo}
T=$($CARGO metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
