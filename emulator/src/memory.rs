//! `guest.memory_mb` enforced as Fly's VM does it: a machine whose processes use more memory
//! than its guest has is OOM-killed, and its exit event says `oom_killed: true`.
//!
//! One task for the whole emulator, not one per machine: every [`INTERVAL`] it reads
//! `/proc/*/stat` once (a few hundred small reads), sums the resident set size per process
//! group, and SIGKILLs each machine group over its limit. A machine's group is its own (see
//! `process.rs`), so what a worker forks counts against its machine, as in a VM. RSS counts
//! pages shared between forked processes once per process, so this errs on the strict side
//! (a real VM counts them once); jobs that fork heavily may want more memory here than on Fly.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::lifecycle::Shared;
use crate::process::signal_group;

/// How often memory is measured: fast enough that a runaway allocation is caught within a
/// few hundred MB, slow enough to cost nothing on an idle machine.
pub(crate) const INTERVAL: Duration = Duration::from_millis(200);

/// Watches every running machine's memory until the emulator closes.
pub(crate) async fn watch(shared: Arc<Shared>) {
    let page_kb = page_size_kb();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if shared.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // (machine id, group, generation, limit in kB) of every machine with a live process.
        let running: Vec<(String, i32, u64, u64)> = {
            let w = shared.world();
            w.machines
                .values()
                .filter_map(|m| {
                    let p = m.proc?;
                    Some((m.id.clone(), p.pid, p.generation, m.memory_mb * 1024))
                })
                .collect()
        };
        if running.is_empty() {
            continue;
        }
        let roots: HashSet<i32> = running.iter().map(|r| r.1).collect();
        let usage = tokio::task::spawn_blocking(move || usage_by_machine(&scan(page_kb), &roots))
            .await
            .unwrap_or_default();
        for (id, pgid, generation, limit_kb) in running {
            let Some(u) = usage.get(&pgid) else { continue };
            if u.rss_kb > limit_kb {
                oom_kill(&shared, &id, generation, u, limit_kb);
            }
        }
    }
}

/// Marks the process generation OOM-killed (the exit handler reads it) and kills everything
/// the machine runs, as the VM would die.
fn oom_kill(shared: &Shared, id: &str, generation: u64, usage: &Usage, limit_kb: u64) {
    let mut w = shared.world();
    let Some(m) = w.machines.get_mut(id) else {
        return;
    };
    let Some(p) = m.proc.filter(|p| p.generation == generation) else {
        return;
    };
    if m.oom_killed_generation == Some(generation) {
        return;
    }
    m.oom_killed_generation = Some(generation);
    let line = format!(
        "[emulator] Out of memory: killed the machine's processes ({} MB resident, guest has {} MB)\n",
        usage.rss_kb / 1024,
        limit_kb / 1024
    );
    crate::lifecycle::append_log(&m.log, shared.settings.log_limit, line.as_bytes());
    tracing::info!(
        machine = id,
        rss_mb = usage.rss_kb / 1024,
        memory_mb = limit_kb / 1024,
        "emulator: machine over its memory, OOM-killed"
    );
    // Processes in groups of their own (a worker's job) first, then the machine's group,
    // whose end the monitor reports as the exit.
    for pid in &usage.pids {
        crate::process::signal_process(*pid, Signal::SIGKILL);
    }
    signal_group(p.pid, Signal::SIGKILL);
}

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: i32,
    ppid: i32,
    pgid: i32,
    /// Resident size: in pages as parsed, in kB once [`scan`] has converted it.
    rss_pages: u64,
}

/// What one machine uses: resident kB over all its processes, and their pids.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Usage {
    rss_kb: u64,
    pids: Vec<i32>,
}

fn page_size_kb() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(bytes).ok().filter(|b| *b > 0).unwrap_or(4096) / 1024
}

/// Every process, from `/proc/<pid>/stat`, with RSS in kB (as `rss_pages * page_kb`).
fn scan(page_kb: u64) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))?;
            // A process may exit between listing and reading: skip it.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut p = parse_stat(&stat)?;
            p.rss_pages *= page_kb;
            Some(p)
        })
        .collect()
}

/// Sums RSS per machine. A process belongs to the machine whose group it is in, or whose
/// member its parent is: a worker's job in a process group of its own still counts, as
/// everything in a VM does.
fn usage_by_machine(procs: &[Proc], roots: &HashSet<i32>) -> HashMap<i32, Usage> {
    let by_pid: HashMap<i32, &Proc> = procs.iter().map(|p| (p.pid, p)).collect();
    let mut owner: HashMap<i32, Option<i32>> = HashMap::new();
    fn owner_of(
        pid: i32,
        by_pid: &HashMap<i32, &Proc>,
        roots: &HashSet<i32>,
        memo: &mut HashMap<i32, Option<i32>>,
        depth: u32,
    ) -> Option<i32> {
        if let Some(o) = memo.get(&pid) {
            return *o;
        }
        let p = by_pid.get(&pid)?;
        let o = if roots.contains(&p.pgid) {
            Some(p.pgid)
        } else if depth < 64 && p.ppid > 1 {
            owner_of(p.ppid, by_pid, roots, memo, depth + 1)
        } else {
            None
        };
        memo.insert(pid, o);
        o
    }
    let mut usage: HashMap<i32, Usage> = HashMap::new();
    for p in procs {
        if let Some(root) = owner_of(p.pid, &by_pid, roots, &mut owner, 0) {
            let u = usage.entry(root).or_default();
            u.rss_kb += p.rss_pages;
            u.pids.push(p.pid);
        }
    }
    usage
}

/// A process from its `/proc/<pid>/stat` line (RSS in pages). The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<Proc> {
    let pid = stat.split_whitespace().next()?.parse().ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(3) ppid(4) pgrp(5) … rss(24), so ppid is [1], pgrp [2], rss [21].
    Some(Proc {
        pid,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        rss_pages: fields.get(21)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_even_with_odd_command_names() {
        let stat = "4242 (a) b (c) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 99 123456 789 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(Proc {
                pid: 4242,
                ppid: 1,
                pgid: 4240,
                rss_pages: 789
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn children_in_groups_of_their_own_count_for_their_machine() {
        let p = |pid, ppid, pgid, rss_pages| Proc {
            pid,
            ppid,
            pgid,
            rss_pages,
        };
        let procs = [
            p(10, 1, 10, 5),   // machine A's init
            p(11, 10, 11, 7),  // its job, own group
            p(12, 11, 11, 1),  // the job's child
            p(20, 1, 20, 3),   // machine B
            p(30, 1, 30, 100), // not a machine
        ];
        let u = usage_by_machine(&procs, &HashSet::from([10, 20]));
        assert_eq!(u[&10].rss_kb, 13);
        assert_eq!(u[&20].rss_kb, 3);
        assert!(!u.contains_key(&30));
    }

    #[test]
    fn own_process_is_measured() {
        let own = std::process::id() as i32;
        let t = std::time::Instant::now();
        let procs = scan(page_size_kb());
        // The figure behind "cheap" (cargo nextest run … --no-capture shows it).
        eprintln!("one scan of {} processes: {:?}", procs.len(), t.elapsed());
        assert!(procs.iter().any(|p| p.pid == own && p.rss_pages > 0));
    }
}
