#!/usr/bin/env python3
"""Lists the allocation sites of a DHAT profile by bytes live at the heap's peak (t-gmax).

Usage: bench/dhat_sites.py dhat.out [N]   (N sites, 15 by default)

For each site: the bytes and blocks live at the peak and the average block size, then the
frames of chat-server, tokio, hyper or tungstenite that allocated it, innermost first.
The profile comes from `valgrind --tool=dhat --dhat-out-file=dhat.out PROGRAM`.
"""
import json
import re
import sys

INTERESTING = re.compile(
    r"chat_server|tungstenite|hyper|tokio::(sync|runtime::task|task|time)|handler|http\.rs|server\.rs"
)


def main() -> None:
    profile = json.load(open(sys.argv[1]))
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    frames = profile["ftbl"]
    sites = sorted(profile["pps"], key=lambda site: -site.get("gb", 0))
    total = sum(site.get("gb", 0) for site in sites)
    print(f"{total} bytes live at the peak")
    for site in sites[:count]:
        live, blocks = site.get("gb", 0), site.get("gbk", 0)
        print(f"{live:>10} B in {blocks:>6} blocks (avg {live / max(1, blocks):.0f} B)")
        shown = []
        for index in site["fs"]:
            frame = re.sub(r"^0x[0-9A-F]+: ", "", frames[index])
            if INTERESTING.search(frame) and frame not in shown:
                shown.append(frame)
        for frame in shown[:5]:
            print("      ", frame[:160])


if __name__ == "__main__":
    main()
