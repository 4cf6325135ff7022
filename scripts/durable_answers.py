#!/usr/bin/env python3
"""Reads an strace of lifeline on SQLite (scripts/trace-sqlite-durability.sh) and checks that
every `llm:tool-output` was sent only after a sync of the WAL that began after the commit
holding the tool call's rows.

    durable_answers.py TRACE [TID ...]

The commit of a tool call is the first WAL commit whose pages hold its id: the WAL's frames are
written in order, a frame header (24 bytes) whose second word is not 0 marks a commit, and the
commit ends with that frame's page. Syncs are fsync/fdatasync calls on the WAL file, by any
thread (the log writer's sync thread, the log writer itself, sqlx's connections). TIDs given
after the trace are left out of the syncs: leaving out the threads that sync shows that the
check fails when answers do not wait for a sync. Exits 1 if any answer came first.
"""
import re
import sys

LINE = re.compile(r'^(\d+)\s+(\d+):(\d+):(\d+\.\d+)\s+(.*)$')
TOOL_ID = re.compile(r'lg-[0-9a-f]{32}')
REPLY_ID = re.compile(r'tool_call_id\\+"\s*:\s*\\+"(lg-[0-9a-f]{32})')


def unescape(s, n):
    """The first n bytes of a string as strace prints it (C escapes)."""
    out = bytearray()
    i = 0
    simple = {'n': 10, 't': 9, 'r': 13, 'v': 11, 'f': 12, '"': 34, '\\': 92}
    while i < len(s) and len(out) < n:
        c = s[i]
        if c != '\\':
            out.append(ord(c))
            i += 1
            continue
        d = s[i + 1]
        if d in '01234567':
            j = i + 1
            while j < len(s) and j < i + 4 and s[j] in '01234567':
                j += 1
            out.append(int(s[i + 1:j], 8))
            i = j
        elif d == 'x':
            out.append(int(s[i + 2:i + 4], 16))
            i += 4
        else:
            out.append(simple.get(d, ord(d)))
            i += 2
    return bytes(out)


def events(path):
    """(syscall, fd description, start, end, tid, arguments), unfinished calls joined."""
    pending, out = {}, []
    for line in open(path, errors='replace'):
        m = LINE.match(line.rstrip('\n'))
        if not m:
            continue
        tid, rest = m.group(1), m.group(5)
        t = int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
        if re.match(r'<\.\.\. \w+ resumed>', rest):
            if tid in pending:
                name, start, info, args = pending.pop(tid)
                out.append((name, info, start, t, tid, args))
            continue
        c = re.match(r'(\w+)\((\d+)<([^>]*)>(.*)', rest)
        if not c:
            continue
        name, info, args = c.group(1), c.group(3), c.group(4)
        if rest.endswith('<unfinished ...>'):
            pending[tid] = (name, t, info, args)
            continue
        d = re.search(r'<([\d.]+)>$', rest)
        out.append((name, info, t, t + (float(d.group(1)) if d else 0), tid, args))
    return out


def main():
    path, ignored = sys.argv[1], set(sys.argv[2:])
    ev = events(path)
    wal = sorted((e for e in ev if e[0] == 'pwrite64' and e[1].endswith('-wal')),
                 key=lambda e: e[2])
    syncs = [e for e in ev if e[0] in ('fdatasync', 'fsync') and e[1].endswith('-wal')
             and e[4] not in ignored]
    # Each WAL write's commit: ends with the page written after the next commit frame header.
    commit_end, open_writes, closing = [None] * len(wal), [], False
    for i, e in enumerate(wal):
        size = re.search(r'",\s*(\d+),\s*(\d+)', e[5])
        size = int(size.group(1)) if size else 0
        open_writes.append(i)
        if closing and size > 24:
            for j in open_writes:
                commit_end[j] = e[3]
            open_writes, closing = [], False
        elif size == 24:
            header = re.match(r',\s*"(.*)",\s*24,', e[5])
            if header:
                b = unescape(header.group(1), 8)
                closing = len(b) >= 8 and int.from_bytes(b[4:8], 'big') != 0
    committed = {}
    for i, e in enumerate(wal):
        for tool in set(TOOL_ID.findall(e[5])):
            if tool not in committed and commit_end[i] is not None:
                committed[tool] = commit_end[i]
    replies = [e for e in ev if e[0] in ('write', 'writev', 'sendto', 'sendmsg')
               and e[1].startswith('socket:') and 'tool-output' in e[5]]
    ok = early = unmatched = 0
    by_thread = {}
    for r in replies:
        ids = REPLY_ID.findall(r[5])
        if not ids or ids[0] not in committed:
            unmatched += 1
            continue
        commit, sent = committed[ids[0]], r[2]
        covering = [s for s in syncs if s[2] >= commit and s[3] <= sent]
        if covering:
            ok += 1
            first = min(covering, key=lambda s: s[3])[4]
            by_thread[first] = by_thread.get(first, 0) + 1
        else:
            early += 1
            if early <= 3:
                print(f'answered before its WAL was synced: {ids[0]} (commit ended at {commit:.6f} s, '
                      f'answer at {sent:.6f} s)')
    print(f'WAL writes {len(wal)}, WAL syncs {len(syncs)}, tool outputs {len(replies)}: {ok} sent '
          f'after a WAL sync begun after their commit, {early} before, {unmatched} not matched; '
          f'first such sync by thread {by_thread}')
    sys.exit(1 if early or unmatched or not replies else 0)


if __name__ == '__main__':
    main()
