//! `guest.memory_mb` enforced as Fly's VM does it: a machine whose processes use more memory
//! than its guest has is OOM-killed, and its exit event says `oom_killed: true`.
//!
//! One task for the whole emulator, not one per machine: every [`INTERVAL`] it reads
//! `/proc/*/stat` once (a few hundred small reads), sums the resident set size per process
//! group, and SIGKILLs each machine group over its limit. A machine's group is its own (see
//! `process.rs`), so what a worker forks counts against its machine, as in a VM. RSS counts
//! pages shared between forked processes once per process, so this errs on the strict side
//! (a real VM counts them once); jobs that fork heavily may want more memory here than on Fly.

use std::collections::HashMap;
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
        let usage = tokio::task::spawn_blocking(move || rss_by_group_kb(page_kb))
            .await
            .unwrap_or_default();
        for (id, pgid, generation, limit_kb) in running {
            let used_kb = usage.get(&pgid).copied().unwrap_or(0);
            if used_kb > limit_kb {
                oom_kill(&shared, &id, generation, used_kb, limit_kb);
            }
        }
    }
}

/// Marks the process generation OOM-killed (the exit handler reads it) and kills its group.
fn oom_kill(shared: &Shared, id: &str, generation: u64, used_kb: u64, limit_kb: u64) {
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
        used_kb / 1024,
        limit_kb / 1024
    );
    crate::lifecycle::append_log(&m.log, shared.settings.log_limit, line.as_bytes());
    tracing::info!(
        machine = id,
        rss_mb = used_kb / 1024,
        memory_mb = limit_kb / 1024,
        "emulator: machine over its memory, OOM-killed"
    );
    signal_group(p.pid, Signal::SIGKILL);
}

fn page_size_kb() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(bytes).ok().filter(|b| *b > 0).unwrap_or(4096) / 1024
}

/// Resident memory in kB per process group, from `/proc/<pid>/stat` of every process.
fn rss_by_group_kb(page_kb: u64) -> HashMap<i32, u64> {
    let mut by_group = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return by_group;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A process may exit between listing and reading: skip it.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((pgid, pages)) = parse_stat(&stat) {
            *by_group.entry(pgid).or_insert(0) += pages * page_kb;
        }
    }
    by_group
}

/// (process group, resident pages) from a `/proc/<pid>/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<(i32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(3) ppid(4) pgrp(5) … rss(24), so pgrp is [2] and rss is [21].
    let pgid = fields.get(2)?.parse().ok()?;
    let rss = fields.get(21)?.parse().ok()?;
    Some((pgid, rss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_group_and_rss_even_with_odd_command_names() {
        let stat = "4242 (a) b (c) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 99 123456 789 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((4240, 789)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_group_is_measured() {
        let usage = rss_by_group_kb(page_size_kb());
        let own = nix::unistd::getpgrp().as_raw();
        assert!(usage.get(&own).copied().unwrap_or(0) > 0, "{usage:?}");
    }
}
