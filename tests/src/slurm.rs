//! A real one-node Slurm cluster on loopback, inside a temporary directory, for
//! integration tests (run as root; Debian's `slurmctld`, `slurmd`, `slurm-client`, `munge`).
//!
//! [`Cluster::start`] runs three foreground children, each with its key, socket, state,
//! spool, pid and log files in the temporary directory (nothing under /etc, /run or /var):
//! - `munged --foreground --force` (`--force`: it refuses to run as root otherwise) with a
//!   fresh random key; slurm.conf's `AuthInfo=socket=` points every daemon, job and client
//!   at its socket, and `--origin=127.0.0.1` spares it resolving the machine's hostname.
//! - `slurmctld -D` and `slurmd -D -N localhost`, each in its own UTS namespace whose
//!   hostname is `localhost`: the controller and node are both called `localhost`, so the
//!   machine's hostname need not resolve, and `CommunicationParameters=NoCtldInAddrAny,
//!   NoInAddrAny` makes both bind only the address their hostname resolves to (127.0.0.1)
//!   rather than every interface. The ports are picked free on 127.0.0.1.
//!
//! Other settings: jobs run as root (`SlurmUser`/`SlurmdUser=root`); no cgroups, accounting
//! or job-completion store (`proctrack/linuxproc`: a process that a job script leaves
//! behind by exiting first escapes the kill at the job's end; `sacct` needs slurmdbd, so
//! finished tasks are read from `squeue -t all`, which keeps them for `MinJobAge`, 300 s);
//! `CPUs=4` with `SlurmdParameters=config_overrides` so a small array runs all at once even
//! on a 2-core machine; `ReturnToService=2` so the fresh node is taken as up when it first
//! registers; `KillWait=5` seconds from SIGTERM to SIGKILL on `scancel`; an empty
//! `PlugStackConfig` keeps /etc/slurm/plugstack.conf out; `MailProg=/bin/true` silences an
//! error. slurmd still logs harmless errors about the PMIx library missing.
//!
//! A client tool without `SLURM_CONF` (and no /etc/slurm/slurm.conf) falls back to a DNS SRV
//! lookup: [`Cluster::command`] sets it, and jobs inherit it by sbatch's `--export=ALL`.
//!
//! Cancelling: plain `scancel J_T` sends SIGTERM (then SIGKILL after `KillWait`) to the batch
//! script and the task ends CANCELLED; `scancel --signal=TERM J_T` alone signals only job
//! steps (none in a plain batch job): add `--full` to reach the script, whose own exit code
//! then decides the state (FAILED for 143).

use std::fs;
use std::io::{self, Read};
use std::net::TcpListener;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::signals;

/// The node's and the controller's name (the daemons' hostname in their UTS namespace).
pub const NODE: &str = "localhost";

/// How long [`Cluster::start`] waits for the node to be idle.
const START_LIMIT: Duration = Duration::from_secs(60);

/// A running one-node cluster; dropping it cancels all jobs and stops the daemons.
pub struct Cluster {
    /// munged, slurmctld, slurmd (as far as started), with the name of each.
    daemons: Vec<(&'static str, Child)>,
    conf: PathBuf,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Start munged, slurmctld and slurmd and wait (at most 60 s) until the node is idle;
    /// panics with the daemons' logs otherwise.
    pub fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("qbackup-slurm-")
            .tempdir()
            .expect("temporary directory");
        // Others may reach the munge socket (munged warns otherwise); the key stays 0400.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let d = dir.path().to_path_buf();
        let mut cluster = Cluster {
            daemons: Vec::new(),
            conf: d.join("slurm.conf"),
            dir,
        };

        let mut key = [0u8; 1024];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .expect("reading /dev/urandom");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(d.join("munge.key"))
            .and_then(|mut f| io::Write::write_all(&mut f, &key))
            .expect("writing munge.key");
        let socket = d.join("munge.socket");
        let mut munged = Command::new(sbin("munged"));
        munged
            .args(["--foreground", "--force", "--origin=127.0.0.1"])
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", d.join("munge.key").display()))
            .arg(format!("--pid-file={}", d.join("munged.pid").display()))
            .arg(format!("--seed-file={}", d.join("munged.seed").display()));
        cluster.spawn("munged", munged, "munged.log");
        cluster.wait_until("the munge socket", Duration::from_secs(10), |_| {
            socket.exists()
        });

        for sub in ["state", "spool"] {
            fs::create_dir(d.join(sub)).expect("mkdir");
        }
        fs::write(d.join("plugstack.conf"), "").expect("plugstack.conf");
        let (ctld_port, slurmd_port) = free_ports();
        let p = |name: &str| d.join(name).display().to_string();
        let conf = format!(
            "ClusterName=qbtest
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
AuthInfo=socket={socket}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={ctld_pid}
SlurmdPidFile={slurmd_pid}
SlurmctldLogFile={ctld_log}
SlurmdLogFile={slurmd_log}
PlugStackConfig={plugstack}
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=5
SlurmdParameters=config_overrides
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={NODE} CPUs=4 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
",
            socket = socket.display(),
            state = p("state"),
            spool = p("spool"),
            ctld_pid = p("slurmctld.pid"),
            slurmd_pid = p("slurmd.pid"),
            ctld_log = p("slurmctld.log"),
            slurmd_log = p("slurmd.log"),
            plugstack = p("plugstack.conf"),
        );
        fs::write(&cluster.conf, conf).expect("writing slurm.conf");

        let mut ctld = Command::new(sbin("slurmctld"));
        ctld.arg("-D").arg("-f").arg(&cluster.conf);
        cluster.spawn("slurmctld", in_localhost_uts(ctld), "slurmctld.stderr");
        let mut slurmd = Command::new(sbin("slurmd"));
        slurmd.args(["-D", "-N", NODE, "-f"]).arg(&cluster.conf);
        cluster.spawn("slurmd", in_localhost_uts(slurmd), "slurmd.stderr");

        cluster.wait_until("the node to be idle (sinfo)", START_LIMIT, |c| {
            let out = c.command("sinfo").args(["-h", "-N", "-o", "%T"]).output();
            out.is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "idle"
            })
        });
        cluster
    }

    /// A client tool (sbatch, squeue, scancel, sinfo, scontrol, ...) with `SLURM_CONF` set,
    /// run in the cluster's directory (where stray `slurm-*.out` files then land).
    pub fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.env("SLURM_CONF", &self.conf).current_dir(self.dir());
        cmd
    }

    /// The slurm.conf path.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The cluster's temporary directory (free for a test's scripts and outputs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemons' logs, for panic messages.
    pub fn log(&self) -> String {
        let mut all = String::new();
        for (log, fallback) in [
            ("munged.log", None),
            ("slurmctld.log", Some("slurmctld.stderr")),
            ("slurmd.log", Some("slurmd.stderr")),
        ] {
            let read = |name: &str| fs::read_to_string(self.dir().join(name)).unwrap_or_default();
            let (mut name, mut text) = (log, read(log));
            if let Some(f) = fallback.filter(|_| text.trim().is_empty()) {
                (name, text) = (f, read(f));
            }
            all.push_str(&format!("==== {name}\n{text}"));
        }
        all
    }

    /// `(task id, state)` of each task of array job `job_id`, by task id, finished ones too
    /// (for `MinJobAge`); empty once Slurm has forgotten the job.
    pub fn array_tasks(&self, job_id: &str) -> Vec<(String, String)> {
        let out = self
            .command("squeue")
            .args(["--array", "-h", "-t", "all", "-j", job_id, "-o", "%K %T"])
            .output()
            .expect("running squeue");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            assert!(
                stderr.contains("Invalid job id"),
                "squeue -j {job_id}: {stderr}"
            );
            return Vec::new();
        }
        let mut tasks: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(t, s)| (t.to_string(), s.trim().to_string()))
            .collect();
        tasks.sort_by_key(|(t, _)| (t.parse::<u64>().unwrap_or(u64::MAX), t.clone()));
        tasks
    }

    /// Spawn a daemon with stdout and stderr into `log` in the directory.
    fn spawn(&mut self, name: &'static str, mut cmd: Command, log: &str) {
        let file = fs::File::create(self.dir().join(log)).expect("creating a log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        self.daemons.push((name, child));
    }

    /// Poll `cond` every 200 ms until it holds, panicking with the logs after `limit` or
    /// when a daemon has exited.
    fn wait_until(&mut self, what: &str, limit: Duration, mut cond: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        loop {
            if cond(self) {
                return;
            }
            for (name, child) in &mut self.daemons {
                if let Ok(Some(status)) = child.try_wait() {
                    let (name, log) = (*name, self.log());
                    panic!("{name} exited ({status}) while waiting for {what}\n{log}");
                }
            }
            assert!(
                start.elapsed() < limit,
                "waited {limit:?} for {what}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn running(&mut self, name: &str) -> bool {
        self.daemons
            .iter_mut()
            .any(|(n, c)| *n == name && matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Kill the jobs first: their slurmstepd processes are not the daemons' children.
        if self.running("slurmctld") && self.running("slurmd") {
            let mut scancel = self.command("scancel");
            scancel.args(["--me", "--full", "--signal=KILL"]);
            if run_bounded(scancel, Duration::from_secs(15)) {
                let deadline = Instant::now() + Duration::from_secs(15);
                while Instant::now() < deadline {
                    let out = self.command("squeue").args(["-h", "-o", "%i"]).output();
                    if out.is_ok_and(|o| o.status.success() && o.stdout.is_empty()) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        // slurmd and slurmctld together, then munged.
        let mut daemons = std::mem::take(&mut self.daemons);
        let munged = daemons
            .iter()
            .position(|(n, _)| *n == "munged")
            .map(|i| daemons.remove(i));
        stop(daemons);
        stop(munged.into_iter().collect());
    }
}

/// SIGTERM the children, SIGKILL those still running 10 s later, and reap them.
fn stop(mut children: Vec<(&'static str, Child)>) {
    for (_, c) in &mut children {
        if matches!(c.try_wait(), Ok(None)) {
            signals::kill(c, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (_, c) in &mut children {
        while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(c.try_wait(), Ok(None)) {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
}

/// Run `cmd` (output discarded) for at most `limit`, killing it then; whether it succeeded.
fn run_bounded(mut cmd: Command, limit: Duration) -> bool {
    let Ok(mut child) = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn() else {
        return false;
    };
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// `cmd` run in a new UTS namespace whose hostname is [`NODE`].
fn in_localhost_uts(mut cmd: Command) -> Command {
    // SAFETY: between fork and exec only the async-signal-safe unshare(2) and
    // sethostname(2) run, on a constant buffer.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUTS) != 0
                || libc::sethostname(NODE.as_ptr().cast(), NODE.len()) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Two distinct ports free on 127.0.0.1 just now.
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = |l: &TcpListener| l.local_addr().expect("local_addr").port();
    (port(&a), port(&b))
}

/// A daemon's path: /usr/sbin may be missing from a test's PATH.
fn sbin(name: &str) -> PathBuf {
    let p = Path::new("/usr/sbin").join(name);
    if p.exists() {
        p
    } else {
        PathBuf::from(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_runs_an_array_job() {
        let c = Cluster::start();
        let script = c.dir().join("task.sh");
        fs::write(
            &script,
            "#!/bin/sh\necho \"$SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT $SLURM_ARRAY_TASK_MIN $QB_PROBE\"\n",
        )
        .expect("script");
        let out = c
            .command("sbatch")
            .args(["--parsable", "--wait", "--array=1-3"])
            .arg(format!("--output={}/out-%a.txt", c.dir().display()))
            .arg(&script)
            .env("QB_PROBE", "exported")
            .output()
            .expect("sbatch");
        let log = || c.log();
        assert!(out.status.success(), "sbatch: {out:?}\n{}", log());
        let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
        for task in 1..=3 {
            let text = fs::read_to_string(c.dir().join(format!("out-{task}.txt")))
                .unwrap_or_else(|e| panic!("task {task} output: {e}\n{}", log()));
            assert_eq!(text, format!("{task} 3 1 exported\n"));
        }
        let done =
            |s: &str| [("1", s), ("2", s), ("3", s)].map(|(t, s)| (t.to_string(), s.to_string()));
        assert_eq!(c.array_tasks(&job), done("COMPLETED"));

        // One running task of another array, cancelled, ends CANCELLED; the others run on.
        let out = c
            .command("sbatch")
            .args([
                "--parsable",
                "--array=1-3",
                "--output=/dev/null",
                "--wrap=sleep 30",
            ])
            .output()
            .expect("sbatch");
        let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let states = |want: &[&str]| {
            std::thread::sleep(Duration::from_millis(100));
            let got = c.array_tasks(&job);
            got.len() == 3 && got.iter().zip(want).all(|((_, s), w)| s == w)
        };
        signals::wait_for("three running tasks", Duration::from_secs(20), || {
            states(&["RUNNING"; 3])
        });
        crate::run_ok(c.command("scancel").arg(format!("{job}_2")));
        signals::wait_for("task 2 cancelled", Duration::from_secs(20), || {
            states(&["RUNNING", "CANCELLED", "RUNNING"])
        });
    }
}
