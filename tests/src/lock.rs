//! Fleet-lock helpers for the contour: lock a fleet from an admin client, certify machines and members, and
//! read the fingerprints people compare, all through the real `cmdop` and `cmdop-agent` binaries.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::{Contour, command, register_secret, run, run_ok};

impl Contour {
    /// The file of `fleet`'s admin API key: created on first use, the same one afterwards.
    pub fn admin_key(&self, fleet: &str) -> PathBuf {
        self.shared_key_file(fleet, "admin")
    }

    /// Runs `cmdop fleet lock ARGS… --workspace FLEET` as client `admin` with the fleet's admin API key.
    pub fn lock_admin(&self, admin: &str, fleet: &str, args: &[&str]) -> Output {
        let mut command = self.cli_with_key(admin, &self.admin_key(fleet));
        command
            .args(["fleet", "lock"])
            .args(args)
            .args(["--workspace", fleet]);
        run(&mut command)
    }

    /// [`Contour::lock_admin`] that must succeed; returns its stdout.
    pub fn lock_admin_ok(&self, admin: &str, fleet: &str, args: &[&str]) -> String {
        let output = self.lock_admin(admin, fleet, args);
        assert!(
            output.status.success(),
            "cmdop fleet lock {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Locks `fleet` from client `admin` (`cmdop fleet lock init`); returns the fleet key's fingerprint.
    pub fn lock_fleet(&self, fleet: &str, admin: &str) -> String {
        let out = self.lock_admin_ok(admin, fleet, &["init"]);
        out.lines()
            .find_map(|line| line.strip_prefix("fleet key: "))
            .unwrap_or_else(|| panic!("no fleet key in {out:?}"))
            .trim()
            .to_owned()
    }

    /// The fingerprint of machine `hostname`'s agent key, as `cmdop-agent identity show` prints it there.
    pub fn agent_fingerprint(&self, hostname: &str) -> String {
        let shown = run_ok(
            command("cmdop-agent")
                .arg("--config-dir")
                .arg(self.agent_dir(hostname))
                .args(["--kek-backend", "file", "identity", "show", "--json"]),
        );
        let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
        shown["fingerprint"].as_str().unwrap().to_owned()
    }

    /// Certifies machine `hostname` of `fleet` from client `admin`, after the fingerprint check.
    pub fn certify(&self, admin: &str, fleet: &str, hostname: &str) {
        let fingerprint = self.agent_fingerprint(hostname);
        self.lock_admin_ok(
            admin,
            fleet,
            &["sign", hostname, "--fingerprint", &fingerprint],
        );
    }

    /// The fingerprint of client `client`'s key, as `cmdop status` prints it (logging in with `key_file`).
    pub fn client_fingerprint(&self, client: &str, key_file: &Path) -> String {
        let status = run_ok(
            self.cli_with_key(client, key_file)
                .args(["status", "--json"]),
        );
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        status["client_fingerprint"].as_str().unwrap().to_owned()
    }

    /// Makes client `client` (logging in with `key_file`) a member of `fleet` with `role`, signed by
    /// client `admin`; pins the fleet key on the member's side too.
    pub fn add_member(
        &self,
        admin: &str,
        fleet: &str,
        client: &str,
        key_file: &Path,
        role: &str,
        fleet_key: &str,
    ) {
        let fingerprint = self.client_fingerprint(client, key_file);
        self.lock_admin_ok(admin, fleet, &["add-member", &fingerprint, "--role", role]);
        self.trust_fleet(client, key_file, fleet, fleet_key);
    }

    /// Pins `fleet_key` on client `client` (`cmdop fleet lock trust`).
    pub fn trust_fleet(&self, client: &str, key_file: &Path, fleet: &str, fleet_key: &str) {
        run_ok(self.cli_with_key(client, key_file).args([
            "fleet",
            "lock",
            "trust",
            fleet_key,
            "--workspace",
            fleet,
        ]));
    }

    /// Creates an enrolment key for `fleet` from client `admin` with extra flags, written to a 0600 file
    /// in the contour's directory; returns the file.
    pub fn enrolment_key(&self, admin: &str, fleet: &str, name: &str, extra: &[&str]) -> PathBuf {
        let path = self.root.path().join(name);
        let out_path = path.display().to_string();
        let mut args = vec!["enrol-key", "--out", out_path.as_str()];
        args.extend_from_slice(extra);
        self.lock_admin_ok(admin, fleet, &args);
        let text = std::fs::read_to_string(&path).unwrap();
        register_secret(text.trim());
        path
    }
}
