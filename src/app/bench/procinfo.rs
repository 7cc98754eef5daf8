//! What the server costs, read from outside through /proc: RSS, threads, CPU, memory maps;
//! and the machine's description for the report. Parsers are pure and unit-tested.

use std::fs;
use std::time::Duration;

/// One look at a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// Resident set size in KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Threads (entries of /proc/PID/task).
    pub threads: u64,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Memory maps (lines of /proc/PID/maps).
    pub maps: u64,
}

/// Clock ticks per second for /proc/PID/stat times (USER_HZ; 100 on every Linux ABI).
pub const TICKS_PER_SEC: u64 = 100;

/// `VmRSS` in KiB from the text of /proc/PID/status.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// utime + stime (clock ticks) from the text of /proc/PID/stat.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields are counted
    // after its closing parenthesis. utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut f = after.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Reads a sample of process `pid`; None when it is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let threads = fs::read_dir(format!("/proc/{pid}/task")).ok()?.count() as u64;
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| m.lines().count() as u64)
        .unwrap_or(0);
    Some(Sample {
        rss_kib: parse_vmrss(&status)?,
        threads,
        cpu_ticks: parse_cpu_ticks(&stat)?,
        maps,
    })
}

/// CPU used between two samples, as a fraction of one core over `wall`.
pub fn cpu_fraction(before: &Sample, after: &Sample, wall: Duration) -> f64 {
    let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64;
    ticks / TICKS_PER_SEC as f64 / wall.as_secs_f64().max(1e-9)
}

/// CPU seconds between two samples.
pub fn cpu_secs(before: &Sample, after: &Sample) -> f64 {
    after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / TICKS_PER_SEC as f64
}

/// Nanoseconds on a CPU from the text of /proc/PID/task/TID/schedstat (its first field).
pub fn parse_schedstat_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// CPU time of every thread of `pid`, in nanoseconds, from the scheduler's own account
/// (/proc/PID/task/*/schedstat): unlike the 10 ms clock ticks of /proc/PID/stat it resolves
/// the few milliseconds a short run costs Redis. None when the process is gone or the kernel
/// keeps no such account.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        // A thread that exits between the listing and the read is simply not counted.
        if let Ok(text) = fs::read_to_string(task.path().join("schedstat")) {
            total += parse_schedstat_ns(&text)?;
        }
    }
    Some(total)
}

/// `MemTotal` in KiB from the text of /proc/meminfo.
pub fn parse_memtotal(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The soft `Max open files` limit from the text of /proc/PID/limits.
pub fn parse_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The machine, as the report describes it.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// Online CPU cores.
    pub cores: usize,
    /// Memory in MiB.
    pub mem_mib: u64,
    /// Soft limit on open files.
    pub nofile: u64,
    /// vm.max_map_count.
    pub max_map_count: u64,
    /// kernel.pid_max.
    pub pid_max: u64,
    /// kernel.threads-max.
    pub threads_max: u64,
    /// Kernel release.
    pub kernel: String,
    /// CPU model name.
    pub cpu: String,
    /// /proc/loadavg when the run started: other load on the machine skews every number.
    pub loadavg: String,
}

fn read_num(path: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

impl Machine {
    /// Looks at this machine.
    pub fn probe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_mib: fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| parse_memtotal(&m))
                .unwrap_or(0)
                / 1024,
            nofile: fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|l| parse_nofile(&l))
                .unwrap_or(0),
            max_map_count: read_num("/proc/sys/vm/max_map_count"),
            pid_max: read_num("/proc/sys/kernel/pid_max"),
            threads_max: read_num("/proc/sys/kernel/threads-max"),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default(),
            loadavg: fs::read_to_string("/proc/loadavg")
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
        }
    }

    /// One Markdown line.
    pub fn describe(&self) -> String {
        format!(
            "{} cores ({}), {} MiB memory, Linux {}; ulimit -n {}, vm.max_map_count {}, \
             kernel.pid_max {}, kernel.threads-max {}; load average at start {}",
            self.cores,
            if self.cpu.is_empty() { "?" } else { &self.cpu },
            self.mem_mib,
            self.kernel,
            self.nofile,
            self.max_map_count,
            self.pid_max,
            self.threads_max,
            self.loadavg
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrss_and_memtotal() {
        let s = "Name:\thb-server\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss(s), Some(4321));
        assert_eq!(parse_vmrss("Name: x\n"), None);
        assert_eq!(
            parse_memtotal("MemTotal:       24683648 kB\n"),
            Some(24683648)
        );
    }

    #[test]
    fn cpu_ticks_skip_a_tricky_name() {
        let stat = "1234 (hb (server) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn schedstat_gives_nanoseconds() {
        assert_eq!(
            parse_schedstat_ns("36233970 11008475 171\n"),
            Some(36_233_970)
        );
        assert_eq!(parse_schedstat_ns(""), None);
        assert!(cpu_ns(std::process::id()).is_some_and(|ns| ns > 0));
    }

    #[test]
    fn nofile_soft_limit() {
        let l = "Limit                     Soft Limit           Hard Limit           Units\n\
                 Max open files            20000                20000                files\n";
        assert_eq!(parse_nofile(l), Some(20000));
    }

    #[test]
    fn own_process_can_be_sampled() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.threads >= 1 && s.maps > 0);
        let later = Sample {
            cpu_ticks: s.cpu_ticks + 50,
            ..s
        };
        assert!((cpu_fraction(&s, &later, Duration::from_secs(1)) - 0.5).abs() < 1e-9);
    }
}
