# Summarises chat-bench reports tagged by bench/compare.sh (one JSON object per line, slurped):
# one Markdown row per (scenario, figure) with the median [min–max] (n = runs) of each server and
# the ratio of the medians, chat-server / Node. Figures a scenario does not report are skipped.
# Multi-node reports (several --url and --server-pid) add a few rows per node ("node 1 …", taken
# from runs with more than one entry in .servers; "server …" rows are then the nodes' sum), and
# reports with --redis-pid add rows for Redis.
#
#   jq -rs --argjson quiet null -f bench/summarize.jq results.jsonl   # every run
#   jq -rs --argjson quiet 20 -f bench/summarize.jq results.jsonl     # only quiet runs
  def median: sort | if length == 0 then null
    elif length % 2 == 1 then .[length / 2 | floor]
    else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def fmt: if . == null then "–" elif . >= 100 then (. | round | tostring)
    else ((. * 100 | round) / 100 | tostring) end;
  # Per-node figures (paths into .servers) count only multi-node runs, where .server is the sum.
  def stat($rows; $path): [$rows[]
      | select($path[0] != "servers" or ((.servers // []) | length) > 1)
      | getpath($path) | select(. != null)]
    | if length == 0 then null
      else {median: median, min: min, max: max, n: length} end;
  def ms: if . == null then null
    else map_values(if type == "number" then . / 1000 else . end) + {n: .n} end;
  def cell: if . == null then "–"
    else "\(.median | fmt) [\(.min | fmt)–\(.max | fmt)] (n=\(.n))" end;
  ([.[] | (.servers // []) | length] | max // 0) as $nodes
  | ([
    ["connections opened", ["connections", "opened"]],
    ["setup time (s)", ["connections", "setup_secs"]],
    ["server RSS per connection (KiB)", ["server", "rss_per_connection_kib"]],
    ["delivered msgs/s", ["messages", "delivered_per_sec"]],
    ["sent msgs/s", ["messages", "sent_per_sec"]],
    ["server CPU per delivered msg (µs)", ["server", "cpu_us_per_message"]],
    ["server CPU (% of a core)", ["server", "cpu_percent"]]
  ]
  # Each node of a multi-node run, then Redis (--redis-pid).
  + (if $nodes > 1 then [range($nodes) as $i | (
      ["node \($i + 1) RSS per connection (KiB)", ["servers", $i, "rss_per_connection_kib"]],
      ["node \($i + 1) CPU per delivered msg (µs)", ["servers", $i, "cpu_us_per_message"]],
      ["node \($i + 1) CPU per session (µs)", ["servers", $i, "cpu_us_per_session"]],
      ["node \($i + 1) CPU (% of a core)", ["servers", $i, "cpu_percent"]]
    )] else [] end)
  + [
    ["redis-server RSS per room (KiB)", ["redis", "rss_per_room_kib"]],
    ["redis-server CPU per delivered msg (µs)", ["redis", "cpu_us_per_message"]],
    ["redis-server CPU per session (µs)", ["redis", "cpu_us_per_session"]],
    ["redis-server CPU (% of a core)", ["redis", "cpu_percent"]],
    ["client CPU (% of a core)", ["client", "cpu_percent"]],
    ["latency p50 (ms)", ["latency_us", "p50_us"]],
    ["latency p99 (ms)", ["latency_us", "p99_us"]],
    ["latency p99.9 (ms)", ["latency_us", "p999_us"]],
    ["latency max (ms)", ["latency_us", "max_us"]],
    ["completed sessions/s", ["sessions", "completed_per_sec"]],
    ["server CPU per session (µs)", ["server", "cpu_us_per_session"]],
    ["session time p99 (ms)", ["sessions", "duration_us", "p99_us"]],
    ["CPU of other programs (% of a core)", ["machine", "others_percent"]],
    ["errors", ["errors", "total"]],
    ["closed without close reply", ["connections", "closed_without_reply"]]
  ]) as $figures
  # With --argjson quiet N, only runs during which other programs used less than N % of a core.
  | map(select($quiet == null or (.machine.others_percent // 0) < $quiet))
  | (map(.label) | unique) as $labels
  | "| scenario | figure | chat-server median [min–max] | Node median [min–max] | chat-server / Node |",
    "|---|---|---|---|---|",
    ($labels[] as $scenario
      | [.[] | select(.label == $scenario)] as $rows
      | $figures[] as [$name, $path]
      | ([$rows[] | select(.target == "chat-server")] ) as $ours
      | ([$rows[] | select(.target == "node")] ) as $theirs
      | (stat($ours; $path)) as $a
      | (stat($theirs; $path)) as $b
      | select($a != null or $b != null)
      # Latencies are recorded in µs; the table shows ms.
      | (if ($path[-1] | endswith("_us")) then ($a | ms) else $a end) as $a
      | (if ($path[-1] | endswith("_us")) then ($b | ms) else $b end) as $b
      | "| \($scenario) | \($name) | \($a | cell) | \($b | cell) | \(
          if $a and $b and $b.median != 0 then ($a.median / $b.median | fmt) else "–" end) |")
