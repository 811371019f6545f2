# Summaries of timed runs, for the comparison scripts (sourced).

# stats FILE [COL]: "median min max" of column COL (the first by default).
stats() {
  awk -v c="${2:-1}" '{ print $c }' "$1" | sort -g | awk '{ v[NR] = $1 } END {
    if (!NR) { print "n/a n/a n/a"; exit }
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    print m, v[1], v[NR] }'
}

# max_rss FILE: the largest second column (KiB), in MiB.
max_rss() { awk '$2 > m { m = $2 } END { if (NR) printf "%.1f", m / 1024; else print "n/a" }' "$1"; }

# mbps BYTES SECONDS: MB/s, or n/a when SECONDS is not a positive number.
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { if (s !~ /^[0-9.]+$/ || s <= 0) print "n/a"; else printf "%.0f", b / 1e6 / s }'; }
