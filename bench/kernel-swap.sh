#!/bin/sh
# kernel-swap.sh COMMAND [ARGS...] - run COMMAND against the kernel's
# compressed swap, then put the machine back as it was.
#
# Sets up a swap file with zswap compressing with lz4 (or, where zswap
# cannot use lz4, a zram device with lz4), and a memory cgroup (v2 where
# its memory controller is on, else v1) that COMMAND runs in. Whatever
# happens, the trap undoes it all: swap off, files removed, zswap's
# settings restored, the cgroup removed. COMMAND's standard output is
# passed through; this script's own messages go to standard error. Without
# root it runs nothing and prints one JSON line saying why.
set -eu

skip() {
	printf '{"zswap_skipped": "%s"}\n' "$1"
	exit 0
}

[ "$(id -u)" = 0 ] || skip "needs root to set up a swap file, zswap and a memory cgroup"
command -v mkswap >/dev/null && command -v swapon >/dev/null ||
	skip "mkswap and swapon (util-linux) are missing"

ZSWAP=/sys/module/zswap/parameters
SWAPFILE=/var/tmp/exch-bench-$$.swap
SWAP_MB=${EXCH_BENCH_SWAP_MB:-2048}
CG=""
ZRAM=""
OLD_ENABLED=""
OLD_COMP=""
USING=""

cleanup() {
	set +e
	[ -n "$CG" ] && rmdir "$CG" 2>/dev/null
	if [ -n "$ZRAM" ]; then
		swapoff "$ZRAM" 2>/dev/null
		echo 1 >"/sys/block/${ZRAM#/dev/}/reset" 2>/dev/null
	fi
	if [ -f "$SWAPFILE" ]; then
		swapoff "$SWAPFILE" 2>/dev/null
		rm -f "$SWAPFILE"
	fi
	[ -n "$OLD_COMP" ] && echo "$OLD_COMP" >"$ZSWAP/compressor" 2>/dev/null
	[ -n "$OLD_ENABLED" ] && echo "$OLD_ENABLED" >"$ZSWAP/enabled" 2>/dev/null
	echo "kernel-swap.sh: machine restored" >&2
}
trap cleanup EXIT INT TERM

# zswap with lz4, the compressor libexch uses.
if [ -w "$ZSWAP/compressor" ]; then
	OLD_ENABLED=$(cat "$ZSWAP/enabled")
	OLD_COMP=$(cat "$ZSWAP/compressor")
	if echo lz4 >"$ZSWAP/compressor" 2>/dev/null && [ "$(cat "$ZSWAP/compressor")" = lz4 ]; then
		fallocate -l "${SWAP_MB}M" "$SWAPFILE"
		chmod 600 "$SWAPFILE"
		mkswap "$SWAPFILE" >/dev/null
		swapon "$SWAPFILE"
		echo Y >"$ZSWAP/enabled"
		USING=zswap
		echo "kernel-swap.sh: zswap (lz4) over a ${SWAP_MB} MB swap file" >&2
	fi
fi
# Else zram with lz4.
if [ -z "$USING" ]; then
	[ -e /sys/block/zram0 ] || skip "zswap cannot use lz4 here and there is no zram device"
	ZRAM=/dev/zram0
	echo lz4 >/sys/block/zram0/comp_algorithm 2>/dev/null ||
		skip "neither zswap nor zram can compress with lz4 here"
	echo "${SWAP_MB}M" >/sys/block/zram0/disksize
	mkswap "$ZRAM" >/dev/null
	swapon -p 100 "$ZRAM"
	echo "kernel-swap.sh: zram (lz4), ${SWAP_MB} MB" >&2
fi

# A memory cgroup with room for the whole heap: eviction is MADV_PAGEOUT's,
# so every restore is measured without reclaim mixed in.
if grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
	CG=/sys/fs/cgroup/exch-bench-$$
	mkdir "$CG"
	echo "$((SWAP_MB * 2))M" >"$CG/memory.max"
elif [ -d /sys/fs/cgroup/memory ]; then
	CG=/sys/fs/cgroup/memory/exch-bench-$$
	mkdir "$CG"
	echo "$((SWAP_MB * 2 * 1024 * 1024))" >"$CG/memory.limit_in_bytes"
	echo 100 >"$CG/memory.swappiness" 2>/dev/null || true
else
	skip "no memory cgroup controller"
fi
echo "kernel-swap.sh: cgroup $CG" >&2

sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$CG" "$@"
