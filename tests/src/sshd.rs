//! A throwaway OpenSSH server for the tests that drive ssh through cmdop: its own host key and one ed25519
//! user key, its own config, on a free loopback port, killed on drop. The same set-up as the benchmarks'
//! (`xtask/src/bench.rs`, `Sshd`; Debian's `openssh-server`, installed by `cargo xtask ci` when missing), so
//! what the tests prove and what the benchmarks measure is the same sshd.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `openssh-server` puts sshd.
pub const SSHD: &str = "/usr/sbin/sshd";

/// A foreground sshd (`-D`) on a free loopback port.
pub struct Sshd {
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// The private key of its one authorized user key.
    pub user_key: PathBuf,
}

impl Sshd {
    /// Starts sshd with its files under `dir/ssh`; returns once it accepts connections.
    pub fn start(dir: &Path) -> Self {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install Debian's openssh-server (`cargo xtask ci` does)"
        );
        let dir = dir.join("ssh");
        std::fs::create_dir_all(&dir).unwrap();
        let host_key = dir.join("host_ed25519");
        let user_key = dir.join("user_ed25519");
        for key in [&host_key, &user_key] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(key)
                .status()
                .expect("run ssh-keygen (openssh-client)");
            assert!(status.success(), "ssh-keygen failed");
        }
        let authorized = dir.join("authorized_keys");
        std::fs::copy(user_key.with_extension("pub"), &authorized).unwrap();
        // sshd refuses to start without its privilege-separation directory, which only the package's service
        // unit creates.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nPidFile {}\n\
                 UseDNS no\nGSSAPIAuthentication no\nSubsystem sftp internal-sftp\n",
                host_key.display(),
                authorized.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let mut child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "sshd exited with {status}; run `{SSHD} -D -e -f {}` to see why",
                    config.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on 127.0.0.1:{port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            user_key,
        }
    }

    /// `ssh` with this sshd's user key and the options of a quiet, non-interactive client that trusts any host
    /// key (the host key is throwaway), but no destination: the caller adds `-o ProxyCommand=…`, the
    /// destination and the command.
    pub fn ssh(&self) -> Command {
        let mut ssh = Command::new("ssh");
        ssh.args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "GSSAPIAuthentication=no",
            "-i",
        ])
        .arg(&self.user_key);
        ssh.stdin(Stdio::null());
        ssh
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
