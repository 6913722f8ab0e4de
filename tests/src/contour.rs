//! The one fixture every end-to-end test builds on: a whole contour on loopback (a relay, its fleets, keys,
//! users and online machines) in one temporary directory, described by a [`ContourBuilder`] so that a test
//! says only what is special about its contour.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use crate::{Daemon, command, register_secret, run, run_ok};

/// How long a relay may take to listen and an agent to come online.
const START: Duration = Duration::from_secs(30);

/// A whole contour on loopback: a relay with its own data directory, the fleets, users and machines its
/// builder asked for, and helpers to administer it and to run agents and CLIs against it. Everything lives
/// in one temporary directory. Dropping it kills the agents, then the relay, and checks all their output for
/// secrets (see [`Daemon`]).
pub struct Contour {
    /// The machines started by the builder or [`Contour::add_machine`], by hostname.
    machines: BTreeMap<String, Machine>,
    /// The relay process; `None` when the test runs the relay in-process.
    pub relay: Option<Daemon>,
    pub address: String,
    pub fingerprint: String,
    /// How the relay process was started, to start it again the same way; `None` for an in-process relay.
    serve: Option<ServeOptions>,
    /// `host:port` of the relay's Prometheus endpoint, when the builder asked for one.
    metrics: Option<String>,
    /// The API key files made so far by [`Contour::agent_key`] and [`Contour::member_key`], by (fleet, role).
    keys: Mutex<BTreeMap<(String, String), PathBuf>>,
    /// The files holding each user's token, by user name.
    tokens: BTreeMap<String, PathBuf>,
    /// Last, so that it is removed after every process above has been killed.
    pub root: tempfile::TempDir,
}

/// An agent that came online, and the machine id the relay gave it.
pub struct Machine {
    pub agent: Daemon,
    pub id: String,
}

/// What a test wants in its contour. Start from [`Contour::builder`], end with [`ContourBuilder::start`].
#[must_use = "nothing starts until `start` is called"]
pub struct ContourBuilder<'a> {
    relay: RelayPlan<'a>,
    fleets: Vec<String>,
    users: Vec<(String, Vec<String>)>,
    /// (hostname, fleet, extra arguments of `cmdop-agent run`).
    agents: Vec<(String, String, Vec<String>)>,
}

enum RelayPlan<'a> {
    Serve(ServeOptions),
    InProcess(StartInProcess<'a>),
}

/// Starts a relay the test runs itself: given the data directory, it returns (address, fingerprint).
type StartInProcess<'a> = Box<dyn FnOnce(&Path) -> (String, String) + 'a>;

/// A relay process that listens.
struct Served {
    relay: Daemon,
    address: String,
    fingerprint: String,
    /// `host:port` of its metrics endpoint, if it serves one.
    metrics: Option<String>,
}

/// How to start `cmdop-relay serve`.
#[derive(Clone, Default)]
struct ServeOptions {
    /// Settings in `relay.toml` (`--config`) instead of flags.
    config_file: bool,
    metrics: bool,
    json_logs: bool,
    env: Vec<(String, String)>,
    /// The relay binary to run, if not the workspace's (an upgrade runs a copy).
    program: Option<PathBuf>,
}

impl ContourBuilder<'_> {
    /// Creates fleet `name` (`cmdop-relay fleet create`).
    pub fn fleet(mut self, name: &str) -> Self {
        self.fleets.push(name.to_owned());
        self
    }

    /// Starts agent `hostname` in `fleet` (declared with [`ContourBuilder::fleet`]) with the fleet's agent
    /// key; [`ContourBuilder::start`] returns once it is online.
    pub fn agent(self, hostname: &str, fleet: &str) -> Self {
        self.agent_with_args(hostname, fleet, &[])
    }

    /// Like [`ContourBuilder::agent`], with extra arguments for `cmdop-agent run`.
    pub fn agent_with_args(mut self, hostname: &str, fleet: &str, extra: &[&str]) -> Self {
        let extra = extra.iter().map(|arg| (*arg).to_owned()).collect();
        self.agents
            .push((hostname.to_owned(), fleet.to_owned(), extra));
        self
    }

    /// Creates user `name` and a token for `fleets`, written to a 0600 file ([`Contour::token_file`]).
    pub fn user(mut self, name: &str, fleets: &[&str]) -> Self {
        let fleets = fleets.iter().map(|fleet| (*fleet).to_owned()).collect();
        self.users.push((name.to_owned(), fleets));
        self
    }

    /// The relay's settings come from `relay.toml` in the contour's directory ([`Contour::relay_config_file`])
    /// alone, with no `--data-dir` or `--listen` flag.
    pub fn relay_from_config_file(mut self) -> Self {
        self.serve_options().config_file = true;
        self
    }

    /// The relay serves Prometheus metrics on an ephemeral loopback port ([`Contour::metrics_address`]).
    pub fn relay_metrics(mut self) -> Self {
        self.serve_options().metrics = true;
        self
    }

    /// The relay writes its logs as JSON lines.
    pub fn relay_json_logs(mut self) -> Self {
        self.serve_options().json_logs = true;
        self
    }

    /// Sets an environment variable for the relay process.
    pub fn relay_env(mut self, key: &str, value: &str) -> Self {
        self.serve_options()
            .env
            .push((key.to_owned(), value.to_owned()));
        self
    }

    fn serve_options(&mut self) -> &mut ServeOptions {
        match &mut self.relay {
            RelayPlan::Serve(options) => options,
            RelayPlan::InProcess(_) => {
                panic!("an in-process relay takes no `cmdop-relay serve` options")
            }
        }
    }

    /// Starts everything: the relay, then the fleets, users and agents; returns once every agent is online.
    pub fn start(self) -> Contour {
        let root = tempfile::tempdir().expect("tempdir");
        let (relay, address, fingerprint, metrics, serve) = match self.relay {
            RelayPlan::Serve(options) => {
                let Served {
                    relay,
                    address,
                    fingerprint,
                    metrics,
                } = serve(root.path(), &options, None);
                (Some(relay), address, fingerprint, metrics, Some(options))
            }
            RelayPlan::InProcess(start) => {
                let (address, fingerprint) = start(&root.path().join("relay"));
                (None, address, fingerprint, None, None)
            }
        };
        let mut contour = Contour {
            machines: BTreeMap::new(),
            relay,
            address,
            fingerprint,
            serve,
            metrics,
            keys: Mutex::new(BTreeMap::new()),
            tokens: BTreeMap::new(),
            root,
        };
        for fleet in &self.fleets {
            contour.admin(&["fleet", "create", fleet]);
        }
        for (user, fleets) in &self.users {
            contour.create_user(user, fleets);
        }
        // All agents start at once; then each is waited for.
        let starting: Vec<(String, Daemon)> = self
            .agents
            .iter()
            .map(|(hostname, fleet, extra)| {
                assert!(
                    self.fleets.contains(fleet),
                    "agent {hostname} is in fleet {fleet}, which the builder does not create: add .fleet({fleet:?})"
                );
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                let key = contour.agent_key(fleet);
                (hostname.clone(), contour.agent(hostname, fleet, &key, &extra))
            })
            .collect();
        for (hostname, mut agent) in starting {
            let id = online_id(&mut agent);
            contour.machines.insert(hostname, Machine { agent, id });
        }
        contour
    }
}

/// Starts `cmdop-relay serve` for the contour in `root` and waits until it listens; on `listen` if given.
fn serve(root: &Path, options: &ServeOptions, listen: Option<&str>) -> Served {
    let data_dir = root.join("relay");
    let program = options
        .program
        .as_ref()
        .map_or_else(|| "cmdop-relay".to_owned(), |p| p.display().to_string());
    // An absolute path replaces the binaries' directory.
    let mut command = command(&program);
    if options.config_file {
        let mut settings = format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\n",
            data_dir.display().to_string()
        );
        if options.metrics {
            settings.push_str("metrics = \"127.0.0.1:0\"\n");
        }
        if options.json_logs {
            settings.push_str("log_format = \"json\"\n");
        }
        let file = root.join("relay.toml");
        std::fs::write(&file, settings).expect("write relay.toml");
        command.arg("--config").arg(file).arg("serve");
        if let Some(listen) = listen {
            command.args(["--listen", listen]);
        }
    } else {
        command
            .args(["serve", "--data-dir"])
            .arg(&data_dir)
            .args(["--listen", listen.unwrap_or("127.0.0.1:0")]);
        if options.metrics {
            command.args(["--metrics", "127.0.0.1:0"]);
        }
        if options.json_logs {
            command.args(["--log-format", "json"]);
        }
    }
    for (key, value) in &options.env {
        command.env(key, value);
    }
    let mut relay = Daemon::spawn(command);
    let fingerprint = relay.wait_for(START, |line| {
        line.strip_prefix("relay fingerprint: ").map(str::to_owned)
    });
    let address = relay.wait_for(START, |line| {
        line.strip_prefix("listening on ").map(str::to_owned)
    });
    let metrics = options.metrics.then(|| {
        relay.wait_for(START, |line| {
            line.strip_prefix("metrics on http://")
                .and_then(|rest| rest.strip_suffix("/metrics"))
                .map(str::to_owned)
        })
    });
    Served {
        relay,
        address,
        fingerprint,
        metrics,
    }
}

impl Contour {
    /// What a contour should hold; a bare `Contour::builder().start()` is a relay and nothing else.
    pub fn builder() -> ContourBuilder<'static> {
        ContourBuilder {
            relay: RelayPlan::Serve(ServeOptions::default()),
            fleets: Vec::new(),
            users: Vec::new(),
            agents: Vec::new(),
        }
    }

    /// A builder for a contour around a relay the test runs itself (in-process): `start` gets the relay's data
    /// directory (`root/relay`, which the admin verbs use too) and returns its address and fingerprint.
    pub fn builder_in_process<'a>(
        start: impl FnOnce(&Path) -> (String, String) + 'a,
    ) -> ContourBuilder<'a> {
        ContourBuilder {
            relay: RelayPlan::InProcess(Box::new(start)),
            fleets: Vec::new(),
            users: Vec::new(),
            agents: Vec::new(),
        }
    }

    /// A relay on an ephemeral loopback port, and nothing else yet.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// The contour most tests need: fleet `prod` with machine `web-1` online; reach it with
    /// [`Contour::member_key`]`("prod")`.
    pub fn with_machine() -> Self {
        Self::builder().fleet("prod").agent("web-1", "prod").start()
    }

    /// Kills the relay process (SIGKILL).
    pub fn kill_relay(&mut self) {
        if let Some(relay) = self.relay.as_mut() {
            relay.kill();
        }
    }

    /// Kills the relay (SIGKILL) and starts it again the same way, on the same address with the same data.
    pub fn restart_relay(&mut self) {
        self.kill_relay();
        self.start_relay_again();
    }

    /// Stops the relay as `systemctl stop` does (SIGTERM) and waits for it to exit; returns how long the
    /// stop (its drain) took.
    pub fn stop_relay_gracefully(&mut self) -> Duration {
        self.relay
            .as_mut()
            .expect("an in-process relay cannot be stopped by the harness")
            .terminate(Duration::from_secs(60))
    }

    /// `systemctl restart`: SIGTERM, wait for the exit, start again the same way on the same address. Returns
    /// how long the old relay took to stop.
    pub fn restart_relay_gracefully(&mut self) -> Duration {
        let stopped_in = self.stop_relay_gracefully();
        self.start_relay_again();
        stopped_in
    }

    /// An upgrade: a new binary (a copy of this one, at another path) replaces the running relay, which is
    /// stopped with SIGTERM; the new one starts on the same address and data. Returns how long the old one
    /// took to stop.
    pub fn upgrade_relay(&mut self) -> Duration {
        let upgraded = self.root.path().join("upgrade").join("cmdop-relay");
        std::fs::create_dir_all(upgraded.parent().unwrap()).unwrap();
        std::fs::copy(crate::bin_dir().join("cmdop-relay"), &upgraded).unwrap();
        let stopped_in = self.stop_relay_gracefully();
        self.serve
            .as_mut()
            .expect("an in-process relay cannot be upgraded by the harness")
            .program = Some(upgraded);
        self.start_relay_again();
        stopped_in
    }

    fn start_relay_again(&mut self) {
        let options = self
            .serve
            .clone()
            .expect("an in-process relay cannot be restarted by the harness");
        let served = serve(self.root.path(), &options, Some(&self.address));
        assert_eq!(served.address, self.address);
        assert_eq!(
            served.fingerprint, self.fingerprint,
            "the relay's certificate must survive a restart"
        );
        self.relay = Some(served.relay);
        self.metrics = served.metrics;
    }

    /// The relay process.
    pub fn relay_mut(&mut self) -> &mut Daemon {
        self.relay
            .as_mut()
            .expect("the relay runs in-process, not as a process")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("relay")
    }

    /// The relay's `relay.toml` (written when the builder asked for [`ContourBuilder::relay_from_config_file`]).
    pub fn relay_config_file(&self) -> PathBuf {
        self.root.path().join("relay.toml")
    }

    /// `host:port` of the relay's metrics endpoint ([`ContourBuilder::relay_metrics`]).
    pub fn metrics_address(&self) -> &str {
        self.metrics
            .as_deref()
            .expect("the relay serves no metrics: build the contour with .relay_metrics()")
    }

    /// Runs an admin verb (`cmdop-relay VERB… --data-dir DIR`) that must succeed; returns its output.
    pub fn admin(&self, args: &[&str]) -> Output {
        let output = run(command("cmdop-relay")
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir()));
        assert!(
            output.status.success(),
            "cmdop-relay {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Creates a new API key and writes its secret to a 0600 file; returns (key id, file).
    pub fn api_key(&self, fleet: &str, role: &str) -> (String, PathBuf) {
        let output = self.admin(&["key", "create", "--fleet", fleet, "--role", role]);
        let secret = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        register_secret(&secret);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let id = stderr
            .split_whitespace()
            .skip_while(|word| *word != "key")
            .nth(1)
            .unwrap_or_else(|| panic!("no key id in {stderr:?}"))
            .to_owned();
        let file = self.secret_file(&format!("{fleet}-{role}-{id}.key"), &secret);
        (id, file)
    }

    /// The file of `fleet`'s agent key: created on first use, the same one afterwards.
    pub fn agent_key(&self, fleet: &str) -> PathBuf {
        self.shared_key(fleet, "agent")
    }

    /// The file of `fleet`'s member key: created on first use, the same one afterwards.
    pub fn member_key(&self, fleet: &str) -> PathBuf {
        self.shared_key(fleet, "member")
    }

    /// The file of `fleet`'s key of `role`: created on first use, the same one afterwards.
    pub(crate) fn shared_key_file(&self, fleet: &str, role: &str) -> PathBuf {
        self.shared_key(fleet, role)
    }

    fn shared_key(&self, fleet: &str, role: &str) -> PathBuf {
        let mut keys = self.keys.lock().unwrap();
        keys.entry((fleet.to_owned(), role.to_owned()))
            .or_insert_with(|| self.api_key(fleet, role).1)
            .clone()
    }

    /// Writes a secret to a 0600 file in the contour's directory.
    pub fn secret_file(&self, name: &str, secret: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        register_secret(secret);
        let path = self.root.path().join(name);
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn create_user(&mut self, user: &str, fleets: &[String]) {
        self.admin(&["user", "create", user]);
        let mut args = vec!["token", "create", "--user", user];
        for fleet in fleets {
            args.extend(["--fleet", fleet.as_str()]);
        }
        let token = self.admin(&args);
        let token = String::from_utf8(token.stdout).unwrap();
        let file = self.secret_file(&format!("{user}.token"), token.trim());
        self.tokens.insert(user.to_owned(), file);
    }

    /// The file holding the token of `user` ([`ContourBuilder::user`]).
    pub fn token_file(&self, user: &str) -> &Path {
        self.tokens
            .get(user)
            .unwrap_or_else(|| panic!("no user {user}: build the contour with .user({user:?}, …)"))
    }

    /// Starts an agent with its own config directory `agents/<name>`, enrolled in `fleet` with `key_file`,
    /// without waiting for it: for agents a test stops, restarts or expects to fail.
    pub fn agent(&self, name: &str, fleet: &str, key_file: &Path, extra: &[&str]) -> Daemon {
        Daemon::spawn(self.agent_command(name, fleet, key_file, extra))
    }

    /// The command [`Contour::agent`] runs, for a test that changes it (its environment) before starting it.
    pub fn agent_command(
        &self,
        name: &str,
        fleet: &str,
        key_file: &Path,
        extra: &[&str],
    ) -> Command {
        let mut command = command("cmdop-agent");
        command
            .arg("--config-dir")
            .arg(self.agent_dir(name))
            .args([
                "--kek-backend",
                "file",
                "run",
                "--relay",
                &self.address,
                "--relay-fingerprint",
                &self.fingerprint,
            ])
            .args(["--workspace", fleet, "--hostname", name, "--api-key-file"])
            .arg(key_file)
            .args(extra);
        command
    }

    /// The config directory of agent `name`.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.root.path().join("agents").join(name)
    }

    /// Starts agent `hostname` in `fleet` with the fleet's agent key, as the builder does, and waits until it
    /// is online; returns its machine id.
    pub fn add_machine(&mut self, hostname: &str, fleet: &str, extra: &[&str]) -> String {
        let mut agent = self.agent(hostname, fleet, &self.agent_key(fleet), extra);
        let id = online_id(&mut agent);
        self.machines.insert(
            hostname.to_owned(),
            Machine {
                agent,
                id: id.clone(),
            },
        );
        id
    }

    /// The machine whose agent runs as `hostname`.
    pub fn machine(&self, hostname: &str) -> &Machine {
        self.machines
            .get(hostname)
            .unwrap_or_else(|| panic!("no machine {hostname}: add it with .agent({hostname:?}, …)"))
    }

    pub fn machine_mut(&mut self, hostname: &str) -> &mut Machine {
        self.machines
            .get_mut(hostname)
            .unwrap_or_else(|| panic!("no machine {hostname}: add it with .agent({hostname:?}, …)"))
    }

    /// A `cmdop` command with its own config directory `clients/<name>`, pointed at this relay. It pins
    /// machines met for the first time without asking (`--accept-new`, as a script would); tests of the
    /// first contact itself use [`Contour::cli_strict`].
    pub fn cli(&self, name: &str) -> Command {
        let mut command = self.cli_strict(name);
        command.arg("--accept-new");
        command
    }

    /// [`Contour::cli`] without `--accept-new`: a first contact is refused (stdin is not a terminal).
    pub fn cli_strict(&self, name: &str) -> Command {
        let mut command = command("cmdop");
        command
            .arg("--config-dir")
            .arg(self.client_dir(name))
            .args([
                "--relay",
                &self.address,
                "--relay-fingerprint",
                &self.fingerprint,
            ]);
        command
    }

    /// The config directory of client `name` (its identity, login and pins live in `client/` inside).
    pub fn client_dir(&self, name: &str) -> PathBuf {
        self.root.path().join("clients").join(name)
    }

    /// [`Contour::cli`] presenting the credential in `key_file` (`--api-key-file`).
    pub fn cli_with_key(&self, name: &str, key_file: &Path) -> Command {
        let mut command = self.cli(name);
        command.arg("--api-key-file").arg(key_file);
        command
    }

    /// `cmdop connect --list --json` as seen by `client` with `key_file`, parsed.
    pub fn list(
        &self,
        client: &str,
        key_file: &Path,
        workspace: Option<&str>,
    ) -> Vec<serde_json::Value> {
        let mut command = self.cli_with_key(client, key_file);
        command.args(["connect", "--list", "--json"]);
        if let Some(workspace) = workspace {
            command.args(["--workspace", workspace]);
        }
        serde_json::from_str(&run_ok(&mut command))
            .expect("connect --list --json prints a JSON array")
    }
}

/// One fleet `prod` with one online machine `web-1`, and a member key to reach it: what
/// [`Contour::one_machine`] returns.
pub struct OneMachine {
    pub agent: Daemon,
    pub machine_id: String,
    pub member_key: PathBuf,
}

impl Contour {
    /// Creates fleet `prod` and starts agent `web-1`, returning the agent to the caller; waits until it is
    /// online. The same contour as [`Contour::with_machine`], for a test that wants the agent as a value
    /// (and for tests written against the harness before the builder).
    pub fn one_machine(&self) -> OneMachine {
        self.admin(&["fleet", "create", "prod"]);
        let mut agent = self.agent("web-1", "prod", &self.agent_key("prod"), &[]);
        let machine_id = online_id(&mut agent);
        OneMachine {
            agent,
            machine_id,
            member_key: self.member_key("prod"),
        }
    }
}

/// Waits for an agent's `online: machine <uuid> …` line and returns the uuid.
pub fn online_id(agent: &mut Daemon) -> String {
    agent.wait_for(START, |line| {
        line.strip_prefix("online: machine ")
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    })
}
