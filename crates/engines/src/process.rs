//! Running database tools (pg_dump, pg_basebackup, mariadb-dump, ...) as
//! child processes: their stdout as a backup stream whose end is checked,
//! a recovery stream fed to their stdin, and secrets kept out of every
//! message (passwords travel in the environment, never in argv, and are
//! masked in anything a tool prints).

use std::io::{self, Read};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::Error;

/// The last bytes of a tool's stderr are kept for the job message.
const STDERR_TAIL: usize = 4096;

/// A command line to run, and the secrets it may print.
pub struct Tool {
    pub command: Command,
    /// Shown in messages instead of the full command line.
    pub name: String,
    secrets: Vec<String>,
}

impl Tool {
    pub fn new(program: impl AsRef<std::ffi::OsStr>, name: impl Into<String>) -> Self {
        Tool {
            command: Command::new(program),
            name: name.into(),
            secrets: Vec::new(),
        }
    }

    /// A shell command line (`sh -c`), as users write backup commands.
    pub fn shell(line: &str, name: impl Into<String>) -> Self {
        let mut t = Tool::new("sh", name);
        t.command.arg("-c").arg(line);
        t
    }

    /// Passes a secret in the environment and masks it in messages.
    pub fn secret_env(&mut self, key: &str, value: &str) -> &mut Self {
        self.command.env(key, value);
        self.secret(value)
    }

    /// Masks `value` wherever the tool's output would show it.
    pub fn secret(&mut self, value: &str) -> &mut Self {
        if !value.is_empty() {
            self.secrets.push(value.to_string());
        }
        self
    }

    fn spawn(&mut self, stdin: Stdio, stdout: Stdio) -> Result<Running, Error> {
        let mut command = std::mem::replace(&mut self.command, Command::new(""));
        command.stdin(stdin).stdout(stdout).stderr(Stdio::piped());
        let mut child =
            start_with_the_server(command).map_err(|e| Error::Failed(format!("could not start {}: {e}", self.name)))?;
        let stderr = child.stderr.take().expect("piped");
        let tail = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let tail = tail.clone();
            std::thread::spawn(move || keep_tail(stderr, &tail))
        };
        Ok(Running {
            child,
            name: self.name.clone(),
            secrets: std::mem::take(&mut self.secrets),
            tail,
            reader: Some(reader),
        })
    }

    /// Runs to completion with no input; fails with the tool's stderr.
    pub fn run(mut self) -> Result<String, Error> {
        let running = self.spawn(Stdio::null(), Stdio::piped())?;
        running.finish_with_output()
    }

    /// Starts the tool; its stdout is the returned stream, which reports
    /// the tool's failure (exit status, stderr) as a read error at its end,
    /// so a dump that dies midway never becomes a complete-looking backup.
    pub fn output_stream(mut self) -> Result<OutputStream, Error> {
        let mut running = self.spawn(Stdio::null(), Stdio::piped())?;
        let stdout = running.child.stdout.take().expect("piped");
        Ok(OutputStream {
            stdout,
            running: Some(running),
        })
    }

    /// Runs the tool with `input` copied to its stdin.
    pub fn feed(mut self, mut input: impl Read) -> Result<String, Error> {
        let mut running = self.spawn(Stdio::piped(), Stdio::piped())?;
        let mut stdin = running.child.stdin.take().expect("piped");
        let mut stdout = running.child.stdout.take().expect("piped");
        let out = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stdout.read_to_end(&mut s);
            s
        });
        let copied = io::copy(&mut input, &mut stdin);
        if let Err(e) = &copied
            && e.kind() != io::ErrorKind::BrokenPipe
        {
            // The input failed (a damaged backup): stop the tool before it
            // sees an end of input that looks clean and commits a part.
            let _ = running.child.kill();
            let _ = running.child.wait();
            return Err(Error::Failed(format!(
                "feeding the backup to {}: {}; {} was stopped",
                running.name,
                running.redact(&e.to_string()),
                running.name
            )));
        }
        drop(stdin); // EOF for the tool
        let status = running.wait();
        let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
        // The tool read everything and succeeded, or stopped reading early
        // and said why through its exit status.
        status.map(|()| running.redact(&stdout))
    }
}

/// Starts `command` so that it dies with the server: a tool left running
/// after a SIGKILL of its server reads the end of its input as a clean end
/// and commits what it had (a part of a recovery, written over the retry's
/// work or the live data). The kernel sends it SIGKILL when its parent
/// dies (`PR_SET_PDEATHSIG`), and it leads a process group of its own
/// (a terminal's Ctrl-C is the server's to handle, not each tool's).
///
/// The death signal fires when the *thread* that started the child ends,
/// not the process: started from a pool thread that idles out (tokio's
/// blocking threads end 10 s after their last task), a dump or a WAL
/// receiver would be killed mid-stream. So every tool is started from one
/// thread that lives as long as the process.
///
/// Only the tool itself gets the signal (the setting is not inherited
/// across fork): the commands of a shell line that the killed shell had
/// started live on. Under the shipped systemd unit (`KillMode=
/// control-group`, the default) systemd stops those with the server.
fn start_with_the_server(mut command: Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    use std::sync::OnceLock;
    use std::sync::mpsc::{Sender, channel};
    type Start = (Command, Sender<io::Result<Child>>);
    static STARTER: OnceLock<Sender<Start>> = OnceLock::new();

    let server = std::process::id() as libc::pid_t;
    command.process_group(0);
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: prctl(2) and getppid(2) are
    // plain system calls, and the errors are built from raw OS codes (no
    // allocation). PR_SET_PDEATHSIG takes a signal number and nothing else.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The server died between fork and prctl: no signal will come.
            if libc::getppid() != server {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let starter = STARTER.get_or_init(|| {
        let (tx, rx) = channel::<Start>();
        std::thread::Builder::new()
            .name("tool-starter".into())
            .spawn(move || {
                for (mut command, answer) in rx {
                    let _ = answer.send(command.spawn());
                }
            })
            .expect("a thread to start tools from");
        tx
    });
    let gone = || io::Error::other("the thread that starts tools is gone");
    let (answer, started) = channel();
    starter.send((command, answer)).map_err(|_| gone())?;
    started.recv().map_err(|_| gone())?
}

fn keep_tail(mut from: impl Read, tail: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        let mut t = tail.lock().expect("stderr tail");
        t.extend_from_slice(&buf[..n]);
        if t.len() > 2 * STDERR_TAIL {
            let cut = t.len() - STDERR_TAIL;
            t.drain(..cut);
        }
    }
}

struct Running {
    child: Child,
    name: String,
    secrets: Vec<String>,
    tail: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Running {
    fn redact(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_string(), |t, s| t.replace(s.as_str(), "****"))
    }

    fn stderr(&mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let tail = self.tail.lock().expect("stderr tail");
        let start = tail.len().saturating_sub(STDERR_TAIL);
        self.redact(String::from_utf8_lossy(&tail[start..]).trim())
    }

    /// Waits; a non-zero exit is an error carrying the tool's stderr.
    fn wait(&mut self) -> Result<(), Error> {
        let status = self
            .child
            .wait()
            .map_err(|e| Error::Failed(format!("waiting for {}: {e}", self.name)))?;
        self.check(status)
    }

    fn check(&mut self, status: ExitStatus) -> Result<(), Error> {
        if status.success() {
            return Ok(());
        }
        let stderr = self.stderr();
        let stderr = if stderr.is_empty() {
            "no error output".into()
        } else {
            stderr
        };
        Err(Error::Failed(format!("{} failed ({status}): {stderr}", self.name)))
    }

    fn finish_with_output(mut self) -> Result<String, Error> {
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        self.wait()?;
        Ok(self.redact(&out))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A stream abandoned midway (the backup failed elsewhere): do not
        // leave the tool running or a zombie behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A tool's stdout; at its end, the tool's exit status decides between a
/// clean EOF and an error.
pub struct OutputStream {
    stdout: ChildStdout,
    running: Option<Running>,
}

impl Read for OutputStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0
            && !buf.is_empty()
            && let Some(mut running) = self.running.take()
        {
            running.wait().map_err(io::Error::other)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_whose_tool_fails_ends_in_an_error_with_its_stderr_masked() {
        let mut t = Tool::shell(
            "printf 'partial dump'; echo \"auth failed for $PW\" >&2; exit 3",
            "dumper",
        );
        t.secret_env("PW", "hunter2");
        let mut s = t.output_stream().unwrap();
        let mut out = Vec::new();
        let err = s.read_to_end(&mut out).unwrap_err().to_string();
        assert_eq!(out, b"partial dump");
        assert!(
            err.contains("dumper failed") && err.contains("auth failed for ****"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_stream_whose_tool_succeeds_ends_cleanly() {
        let mut s = Tool::shell("seq 1 100000", "seq").output_stream().unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(out.lines().count(), 100000);
    }

    #[test]
    fn feeding_reports_a_tool_that_stops_reading_and_fails() {
        let input = std::io::repeat(b'x').take(10 << 20);
        let err = Tool::shell("head -c 10 >/dev/null; echo 'syntax error' >&2; exit 1", "loader")
            .feed(input)
            .unwrap_err()
            .to_string();
        assert!(err.contains("loader failed") && err.contains("syntax error"), "{err}");
        let ok = Tool::shell("wc -c", "wc")
            .feed(std::io::repeat(b'x').take(1 << 20))
            .unwrap();
        assert_eq!(ok.trim(), "1048576");
    }
}
