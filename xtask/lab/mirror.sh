# Sourced by the lab's provisioning scripts (kernel.sh, arm64.sh).
#
# The mirror the machine's own apt sources name (deb822 or one-line format), so no
# host is written into the repository.
system_mirror() {
    local uri
    uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /:\/\// && $i !~ /security/) { print $i; exit } }' \
            /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || die "cannot find the Debian mirror in /etc/apt sources"
    echo "$uri"
}
