# shellcheck shell=bash
# Shared by scripts/demo and scripts/check: install what is missing, build.
# Sourced, not run. Every step is skipped when its result is up to date, so
# running a script twice costs only make's own checks the second time.

EXCH_DEBS="gcc make autoconf automake libtool pkg-config liburing-dev libnuma-dev \
libhwloc-dev check liblz4-dev libjemalloc-dev python3"

exch_say() { printf '==> %s\n' "$*"; }

# Installs the Debian packages that are not installed yet (needs root).
exch_install_deps() {
	local missing=() p
	for p in $EXCH_DEBS; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	exch_say "installing ${missing[*]}"
	local sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# exch_build DIR [configure options...]: an out-of-tree build in DIR.
exch_build() {
	local dir=$1
	shift
	if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt Makefile.in ]; then
		exch_say "autoreconf"
		autoreconf -fi >/dev/null 2>&1 || autoreconf -fi
	fi
	mkdir -p "$dir"
	if [ ! -f "$dir/Makefile" ] || [ configure -nt "$dir/config.status" ]; then
		exch_say "configure${*:+ $*} in $dir"
		(cd "$dir" && ../configure -q "$@")
	fi
	exch_say "make in $dir"
	make -s -C "$dir" -j"$(nproc)" >/dev/null
}
