//! A real pseudo-terminal for driving `cmdop` as a person at a keyboard would: keystrokes in, everything the
//! program draws collected, window resizes, and the exit code.

use std::io::{Read as _, Write as _};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{Child, CommandBuilder, MasterPty, PtySize, native_pty_system};

/// A program running in its own terminal.
pub struct Terminal {
    master: Box<dyn MasterPty + Send>,
    writer: Box<dyn std::io::Write + Send>,
    child: Box<dyn Child + Send + Sync>,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Terminal {
    /// Starts `command` (program, arguments, environment and directory are taken over) in a new terminal of
    /// `cols` x `rows`.
    pub fn spawn(command: &Command, cols: u16, rows: u16) -> Self {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("openpty");
        let mut builder = CommandBuilder::new(command.get_program());
        builder.args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => builder.env(key, value),
                None => builder.env_remove(key),
            }
        }
        builder.env("TERM", "xterm-256color");
        if let Some(dir) = command.get_current_dir() {
            builder.cwd(dir);
        }
        let child = pair.slave.spawn_command(builder).expect("spawn in a pty");
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().expect("pty reader");
        let writer = pair.master.take_writer().expect("pty writer");
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&output);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            master: pair.master,
            writer,
            child,
            output,
            reader: Some(reader),
        }
    }

    /// Types `bytes`.
    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to the pty");
        self.writer.flush().expect("flush the pty");
    }

    /// Everything drawn so far.
    pub fn output(&self) -> Vec<u8> {
        self.output.lock().unwrap().clone()
    }

    /// Everything drawn so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output()).into_owned()
    }

    /// How many bytes were drawn so far: a mark for [`Terminal::expect_after`].
    pub fn mark(&self) -> usize {
        self.output.lock().unwrap().len()
    }

    /// Waits until `needle` appears anywhere in the output; returns the output. Panics (showing it) if not.
    pub fn expect(&self, needle: &str, timeout: Duration) -> String {
        self.expect_after(0, needle, timeout)
    }

    /// Waits until `needle` appears in the output after byte `mark`.
    pub fn expect_after(&self, mark: usize, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = {
                let output = self.output.lock().unwrap();
                String::from_utf8_lossy(output.get(mark..).unwrap_or_default()).into_owned()
            };
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {needle:?}; the terminal shows:\n{}",
                text.escape_debug()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Changes the window size; the program gets SIGWINCH.
    pub fn resize(&self, cols: u16, rows: u16) {
        self.master
            .resize(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("resize the pty");
    }

    /// The program's process id.
    pub fn pid(&self) -> u32 {
        self.child.process_id().expect("a pid")
    }

    /// Kills the program with SIGKILL, then waits until everything it wrote has been read.
    pub fn kill_hard(&mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let _ = self.child.wait();
        self.drain();
    }

    /// Waits for the program to exit and for its last output; returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.drain();
                return status.exit_code();
            }
            assert!(
                Instant::now() < deadline,
                "the program did not exit within {timeout:?}; the terminal shows:\n{}",
                self.text().escape_debug()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn drain(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
