//! A machine that lies: an agent built from the client library that registers with the real relay like any
//! other, accepts the real end-to-end channel, and then answers copy requests from a script instead of from a
//! disk. It can send what no real file system would (entries in any order, a file under a symlink, a mode with
//! setuid, names that exist nowhere), which is what the CLI's side of `cp` must survive.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use cmdop_client::secure_stream::{self, SecureSender};
use cmdop_client::{AgentConnection, AgentRegistration, IncomingStream, RelayTarget};
use cmdop_identity::Identity;
use cmdop_proto::e2e::Prologue;
use cmdop_proto::ops::MAX_CHUNK;
use cmdop_proto::ops::copy::{CopyReply, CopyRequest, Entry, EntryKind};
use sha2::{Digest as _, Sha256};

use crate::Contour;

/// What the hostile machine says about one directory it claims to have.
#[derive(Debug, Clone, Default)]
pub struct CopyScript {
    /// The remote path the client will ask for (`Stat` and `List` of exactly this path are answered).
    pub source: String,
    /// The listing, in the order it is sent.
    pub listing: Vec<Entry>,
    /// What `Get` of `source/NAME` returns: the bytes, and the mode claimed in `GetEnd`.
    pub files: BTreeMap<String, (Vec<u8>, u32)>,
}

impl CopyScript {
    /// A script for the directory `source`.
    pub fn new(source: &str) -> Self {
        Self {
            source: source.to_owned(),
            ..Self::default()
        }
    }

    /// Lists a directory.
    pub fn dir(mut self, name: &str) -> Self {
        self.listing.push(entry(name, EntryKind::Dir, 0o755, 0, 1));
        self
    }

    /// Lists a symlink to `target`.
    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        let kind = EntryKind::Symlink {
            target: target.to_owned(),
        };
        self.listing.push(entry(name, kind, 0o777, 0, 1));
        self
    }

    /// Lists a file with `contents`, claiming `mode` for it both in the listing and in `GetEnd`.
    pub fn file(mut self, name: &str, contents: &[u8], mode: u32) -> Self {
        let size = contents.len() as u64;
        self.listing
            .push(entry(name, EntryKind::File, mode, size, 1_700_000_000));
        self.files
            .insert(name.to_owned(), (contents.to_vec(), mode));
        self
    }

    /// The entry listed under `name` (the last one, if the script lists the name twice).
    pub fn entry(&self, name: &str) -> &Entry {
        self.listing
            .iter()
            .rev()
            .find(|e| e.path == name)
            .unwrap_or_else(|| panic!("{name} is not in the script"))
    }

    fn answer(&self, request: CopyRequest) -> Vec<CopyReply> {
        match request {
            CopyRequest::Stat { path } if path == self.source => {
                vec![CopyReply::Entry(entry(&path, EntryKind::Dir, 0o755, 0, 1))]
            }
            CopyRequest::Stat { .. } => vec![CopyReply::Missing],
            CopyRequest::List { path } if path == self.source => self
                .listing
                .iter()
                .cloned()
                .map(CopyReply::Entry)
                .chain([CopyReply::ListEnd])
                .collect(),
            CopyRequest::Get { path, offset } => self.get(&path, offset),
            other => vec![CopyReply::Failed {
                message: format!("this machine only lies about {}: {other:?}", self.source),
            }],
        }
    }

    fn get(&self, path: &str, offset: u64) -> Vec<CopyReply> {
        let name = path
            .strip_prefix(&self.source)
            .map(|rest| rest.trim_start_matches('/'));
        let Some((contents, mode)) = name.and_then(|name| self.files.get(name)) else {
            return vec![CopyReply::Failed {
                message: format!("no {path}"),
            }];
        };
        let from = usize::try_from(offset).unwrap().min(contents.len());
        let mut replies: Vec<CopyReply> = contents[from..]
            .chunks(MAX_CHUNK)
            .map(|chunk| CopyReply::Chunk(chunk.to_vec()))
            .collect();
        replies.push(CopyReply::GetEnd {
            sha256: Sha256::digest(contents).into(),
            mode: *mode,
        });
        replies
    }
}

fn entry(path: &str, kind: EntryKind, mode: u32, size: u64, modified_ns: u64) -> Entry {
    Entry {
        path: path.to_owned(),
        kind,
        mode,
        size,
        modified_ns,
    }
}

/// A hostile machine online in a contour; dropping it drops its runtime, which ends the connection.
pub struct HostileMachine {
    _runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for HostileMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostileMachine").finish_non_exhaustive()
    }
}

impl HostileMachine {
    /// Registers `hostname` in `fleet` with the fleet's agent key and answers every copy stream from `script`;
    /// returns once the relay has it online.
    pub fn start(contour: &Contour, hostname: &str, fleet: &str, script: CopyScript) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let relay = RelayTarget::new(
            contour.address.clone(),
            contour.fingerprint.parse().unwrap(),
        );
        let registration = AgentRegistration {
            api_key: zeroize::Zeroizing::new(read_key(&contour.agent_key(fleet))),
            workspace: fleet.to_owned(),
            hostname: hostname.to_owned(),
            display_name: None,
            os: "linux".to_owned(),
            arch: "x86_64".to_owned(),
            agent_version: "0.0.0-hostile".to_owned(),
            labels: Vec::new(),
        };
        let identity = Arc::new(Identity::generate(&mut rand_core::OsRng));
        let script = Arc::new(script);
        let connection = runtime
            .block_on(AgentConnection::register(&relay, &identity, &registration))
            .unwrap();
        runtime.spawn(serve(connection, identity, script));
        Self { _runtime: runtime }
    }
}

fn read_key(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

async fn serve(mut connection: AgentConnection, identity: Arc<Identity>, script: Arc<CopyScript>) {
    let acceptor = connection.acceptor();
    let fleet_id = connection.fleet_id().into_bytes();
    let accepting = async {
        while let Ok(incoming) = acceptor.accept().await {
            let (identity, script) = (Arc::clone(&identity), Arc::clone(&script));
            tokio::spawn(async move {
                let _ = answer(incoming, fleet_id, &identity, &script).await;
            });
        }
    };
    tokio::select! {
        () = accepting => {}
        _ = connection.keep_alive() => {}
    }
}

async fn answer(
    incoming: IncomingStream,
    fleet_id: [u8; 16],
    identity: &Identity,
    script: &CopyScript,
) -> Result<(), secure_stream::SecureStreamError> {
    let prologue = Prologue {
        fleet_id,
        agent_key: identity.public_key(),
        channel_id: incoming.channel_id(),
        kind: incoming.kind(),
    };
    // A hostile machine asks for no capability: it wants the client in.
    let (mut sender, mut receiver) =
        secure_stream::accept(incoming, prologue, identity, |_, _| Ok::<(), String>(())).await?;
    while let Some(request) = receiver.recv::<CopyRequest>().await? {
        send_all(&mut sender, script.answer(request)).await?;
    }
    sender.end(0).await
}

async fn send_all(
    sender: &mut SecureSender,
    replies: Vec<CopyReply>,
) -> Result<(), secure_stream::SecureStreamError> {
    for reply in replies {
        sender.send(&reply).await?;
    }
    Ok(())
}
