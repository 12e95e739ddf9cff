//! A running daemon inside a namespace: `spa-server run` or `red-relay
//! run`, with its log, its control socket and its counters.

use crate::*;

/// A running `spa-server run` inside a namespace (killed on drop).
pub type Green = Daemon;

/// A running `<program> run --config …` inside a namespace (killed on
/// drop): `spa-server` ([`Daemon::start`]) or another daemon with the same
/// command line ([`Daemon::start_program`]).
#[derive(Debug)]
pub struct Daemon {
    program: PathBuf,
    child: Option<Child>,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `spa-server run --config <config>` inside `ns` and waits for
    /// its "ready" line; panics with the log if it exits or stays silent.
    pub fn start(ns: &Netns, config: &Path, socket: &Path, log: &Path) -> Self {
        Self::start_program(ns, &bin("spa-server"), config, socket, log)
    }

    /// Starts `<program> run --config <config>` inside `ns` and waits for
    /// its "ready" line; panics with the log if it exits or stays silent.
    pub fn start_program(
        ns: &Netns,
        program: &Path,
        config: &Path,
        socket: &Path,
        log: &Path,
    ) -> Self {
        Self::start_argv(
            ns,
            &[
                program.to_str().expect("utf-8"),
                "run",
                "--config",
                config.to_str().expect("utf-8"),
            ],
            socket,
            log,
        )
    }

    /// Starts the command line `argv` (a daemon's `run`, e.g. as a systemd
    /// unit's `ExecStart=` says) inside `ns` and waits for its "ready"
    /// line; panics with the log if it exits or stays silent. `argv[0]`
    /// also answers `status`.
    pub fn start_argv(ns: &Netns, argv: &[&str], socket: &Path, log: &Path) -> Self {
        let program = Path::new(argv[0]);
        let child = ns.spawn(argv, log);
        let mut g = Self {
            program: program.to_path_buf(),
            child: Some(child),
            log: log.to_path_buf(),
            socket: socket.to_path_buf(),
        };
        let mut exited = None;
        let ready = wait_until(Duration::from_secs(15), || {
            if let Some(c) = g.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                exited = Some(st);
                return true;
            }
            g.log_text().lines().any(|l| l.contains(" ready "))
        });
        assert!(
            ready && exited.is_none(),
            "{} did not become ready (exit {exited:?}); log:\n{}",
            g.name(),
            g.log_text()
        );
        g
    }

    /// The program's file name, for messages.
    fn name(&self) -> String {
        self.program
            .file_name()
            .unwrap_or(self.program.as_os_str())
            .to_string_lossy()
            .into_owned()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `<program> status --socket … --json`: the `status` object.
    pub fn status(&self) -> Value {
        let out = Command::new(&self.program)
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap_or_else(|e| panic!("{} status: {e}", self.name()));
        assert!(
            out.status.success(),
            "{} status: {}\nlog:\n{}",
            self.name(),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        assert_eq!(v["ok"], true, "status: {v}");
        v["status"].clone()
    }

    /// One counter of `status` (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.status()["counters"][name].as_u64().unwrap_or(0)
    }

    /// Waits until counter `name` reaches `at_least`; panics with the
    /// counters and the log when it does not within 5 s.
    pub fn wait_counter(&self, name: &str, at_least: u64) {
        self.wait_counter_within(name, at_least, Duration::from_secs(5));
    }

    /// Waits until counter `name` reaches `at_least`; panics with the
    /// counters and the log when it does not within `timeout`.
    pub fn wait_counter_within(&self, name: &str, at_least: u64, timeout: Duration) {
        let ok = wait_until(timeout, || self.counter(name) >= at_least);
        assert!(
            ok,
            "{}: counter {name} did not reach {at_least}: counters {}\nlog:\n{}",
            self.name(),
            self.status()["counters"],
            self.log_text()
        );
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        signal(self.pid(), sig);
    }

    /// Waits for the process to exit (after a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let mut st = None;
        wait_until(timeout, || {
            st = c.try_wait().ok().flatten();
            st.is_some()
        });
        match st {
            Some(s) => s,
            None => {
                let _ = c.kill();
                panic!("{} did not exit; log:\n{}", self.name(), self.log_text())
            }
        }
    }

    /// kill -9, and wait.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a command (it must succeed) and returns its stdout's first line.
pub fn line_of(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_ok(cmd).stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}
