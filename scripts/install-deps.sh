#!/usr/bin/env bash
# Install the real peer programs the end-to-end tests run against, from Debian's packages.
#
# Only packages whose binary is missing are installed, so a machine that has them all
# pays for nothing but a few `command -v` lookups. Runs with no standard input (CI).
set -euo pipefail

# One line per peer: the binary the tests run, then the Debian package that ships it.
# To add a peer, add a line. A binary ending in `*` is installed under a versioned name
# (php-fpm8.2 on Debian 12, php-fpm8.3 elsewhere): any command with that prefix will do.
# A name with a `/` is a file pattern instead, for packages without a binary (a PHP
# extension): present when any file matches it.
DEPS_TABLE='
cgi-fcgi    libfcgi-bin
nginx       nginx
haproxy     haproxy
php-fpm*    php-fpm
php         php-cli
wrk         wrk
redis-server    redis-server
redis-cli       redis-tools
redis-sentinel  redis-sentinel
memcached       memcached
systemd-socket-activate systemd
/usr/lib/php/*/redis.so php-redis
/usr/lib/php/*/memcached.so php-memcached
chromium        chromium
gcc         gcc
dnsmasq     dnsmasq-base
h2load      nghttp2-client
'

# Servers' binaries live in sbin, which a non-root PATH often lacks.
export PATH="${PATH}:/usr/local/sbin:/usr/sbin:/sbin"

# True when the binary (or, for `prefix*`, any command starting with prefix) is on PATH.
have_binary() {
    local binary="$1"
    if [[ "${binary}" == */* ]]; then
        compgen -G "${binary}" >/dev/null
    elif [[ "${binary}" == *'*' ]]; then
        [[ -n "$(compgen -c -- "${binary%'*'}" || true)" ]]
    else
        command -v "${binary}" >/dev/null 2>&1
    fi
}

all_binaries=()
missing_packages=()
missing_binaries=()
while read -r binary package; do
    [[ -z "${binary}" ]] && continue
    all_binaries+=("${binary}")
    if ! have_binary "${binary}"; then
        missing_binaries+=("${binary}")
        missing_packages+=("${package}")
    fi
done <<<"${DEPS_TABLE}"

if [[ ${#missing_packages[@]} -eq 0 ]]; then
    echo "install-deps: nothing to do, all present: ${all_binaries[*]}"
    exit 0
fi

echo "install-deps: missing binaries: ${missing_binaries[*]}"
echo "install-deps: will install Debian packages: ${missing_packages[*]}"

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-deps: not root, cannot install. Run as root:" >&2
    echo "    apt-get update && apt-get install -y --no-install-recommends ${missing_packages[*]}" >&2
    exit 1
fi

# Debian's maintainer scripts start a service on install (nginx would take port 80).
# policy-rc.d exiting 101 tells invoke-rc.d "not allowed", so nothing starts. Keep any
# policy the machine already has, and put it back afterwards.
policy=/usr/sbin/policy-rc.d
policy_backup=""
restore_policy() {
    if [[ -n "${policy_backup}" ]]; then
        mv -f "${policy_backup}" "${policy}"
    else
        rm -f "${policy}"
    fi
}
if [[ -e "${policy}" ]]; then
    policy_backup="$(mktemp /usr/sbin/policy-rc.d.saved.XXXXXX)"
    cp -p "${policy}" "${policy_backup}"
fi
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' >"${policy}"
chmod 755 "${policy}"

export DEBIAN_FRONTEND=noninteractive
apt_options=(-o DPkg::Lock::Timeout=120 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
apt-get "${apt_options[@]}" update </dev/null
apt-get "${apt_options[@]}" install -y --no-install-recommends "${missing_packages[@]}" </dev/null

still_missing=()
for binary in "${missing_binaries[@]}"; do
    have_binary "${binary}" || still_missing+=("${binary}")
done
if [[ ${#still_missing[@]} -ne 0 ]]; then
    echo "install-deps: still missing after install: ${still_missing[*]}" >&2
    exit 1
fi
echo "install-deps: installed ${missing_packages[*]}"
