//! Keeping hb-bench and the server it measures on different cores, for the one measurement
//! where sharing them would measure hb-bench instead: fixed-rate delivery latency.
//!
//! On a small machine a server with two busy threads takes hb-bench's core away from it for
//! a scheduler slice at a time; the latencies hb-bench then records are its own wait, and a
//! single-threaded peer (Redis) never causes it. With [`Apart`], what a run starts inherits
//! the server CPUs (every CPU but the first) and hb-bench runs on the first, as a client on
//! another machine would.

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// A placement: hb-bench on one CPU, servers on the others.
pub struct Apart {
    all: CpuSet,
    bench: CpuSet,
    servers: CpuSet,
    /// The server CPUs, as `taskset -c` would take them (`1`, `1-3`).
    pub server_cpus: String,
    /// hb-bench's CPU.
    pub bench_cpu: usize,
}

impl Apart {
    /// The placement for this machine; None when hb-bench may use fewer than two CPUs.
    pub fn plan() -> Option<Self> {
        let all = sched_getaffinity(None).ok()?;
        let cpus: Vec<usize> = (0..CpuSet::MAX_CPU).filter(|&c| all.is_set(c)).collect();
        let (&first, rest) = cpus.split_first()?;
        if rest.is_empty() {
            return None;
        }
        let mut bench = CpuSet::new();
        bench.set(first);
        let mut servers = CpuSet::new();
        for &c in rest {
            servers.set(c);
        }
        Some(Self {
            all,
            bench,
            servers,
            server_cpus: cpu_list(rest),
            bench_cpu: first,
        })
    }

    /// Runs `start` with this thread on the server CPUs, so the processes (and threads) it
    /// starts inherit them, then moves this thread to its own CPU until the returned guard
    /// is dropped.
    pub fn start<T>(&self, start: impl FnOnce() -> T) -> (T, Placed<'_>) {
        let _ = sched_setaffinity(None, &self.servers);
        let placed = Placed(self);
        let out = start();
        let _ = sched_setaffinity(None, &self.bench);
        (out, placed)
    }
}

/// [`Apart::start`] when there is a placement, else just `start()` (a one-CPU machine).
pub fn start_maybe<T>(apart: Option<&Apart>, start: impl FnOnce() -> T) -> (T, Option<Placed<'_>>) {
    match apart {
        Some(a) => {
            let (out, placed) = a.start(start);
            (out, Some(placed))
        }
        None => (start(), None),
    }
}

/// While alive, hb-bench's thread keeps to its own CPU; dropped, it may use every CPU again.
pub struct Placed<'a>(&'a Apart);

impl Drop for Placed<'_> {
    fn drop(&mut self) {
        let _ = sched_setaffinity(None, &self.0.all);
    }
}

/// `[1, 2, 3, 5]` → `1-3,5`.
fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_read_like_taskset() {
        assert_eq!(cpu_list(&[1]), "1");
        assert_eq!(cpu_list(&[1, 2, 3]), "1-3");
        assert_eq!(cpu_list(&[1, 2, 3, 5, 7, 8]), "1-3,5,7-8");
    }

    #[test]
    fn a_placement_gives_the_bench_one_cpu_and_the_servers_the_rest() {
        let cpus = sched_getaffinity(None).unwrap().count();
        let Some(a) = Apart::plan() else {
            assert!(cpus < 2, "{cpus} CPUs but no placement");
            return;
        };
        let ((), placed) = a.start(|| {
            let now = sched_getaffinity(None).unwrap();
            assert!(!now.is_set(a.bench_cpu), "servers start off hb-bench's CPU");
        });
        let now = sched_getaffinity(None).unwrap();
        assert_eq!(now.count(), 1);
        assert!(now.is_set(a.bench_cpu));
        drop(placed);
        assert_eq!(sched_getaffinity(None).unwrap().count(), a.all.count());
    }
}
