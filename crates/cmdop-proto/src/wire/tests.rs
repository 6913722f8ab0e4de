//! Golden bytes, round trips and never-panic properties for the wire protocol.

use proptest::prelude::*;

use super::*;

fn sample_agent_login() -> AgentLogin {
    AgentLogin {
        credential: "ak".into(),
        workspace: "f".into(),
        public_key: KeyBytes([0x11; 32]),
        signature: SignatureBytes([0x22; 64]),
        hostname: "h".into(),
        display_name: Some("n".into()),
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        auth_capabilities: vec!["ed25519".into()],
        labels: vec![("role".into(), "web".into())],
    }
}

fn sample_machine() -> MachineInfo {
    MachineInfo {
        id: IdBytes([0x33; 16]),
        hostname: "h".into(),
        name: "n".into(),
        public_key: KeyBytes([0x11; 32]),
        online: true,
        last_seen: Some(1_700_000_000),
        os: "linux".into(),
        arch: "arm64".into(),
        agent_version: "0.1.0".into(),
        labels: vec![("env".into(), "prod".into())],
    }
}

fn peer_samples() -> Vec<(PeerMessage, &'static str)> {
    vec![
        (
            PeerMessage::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: Role::Agent,
                client_software: "a".into(),
            }),
            "00000005 00 02 00 01 61",
        ),
        (
            PeerMessage::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: Role::Client,
                client_software: "".into(),
            }),
            "00000004 00 02 01 00",
        ),
        (
            PeerMessage::AgentLogin(sample_agent_login()),
            concat!(
                "00000091 01 02 616b 01 66",
                " 1111111111111111111111111111111111111111111111111111111111111111",
                " 22222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222",
                " 01 68 01 01 6e 05 6c696e7578 06 7838365f3634 05 302e312e30 01 07 65643235353139",
                " 01 04 726f6c65 03 776562",
            ),
        ),
        (
            PeerMessage::ClientLogin(ClientLogin {
                credential: "ut".into(),
                public_key: KeyBytes([0x11; 32]),
                signature: SignatureBytes([0x22; 64]),
            }),
            concat!(
                "00000064 02 02 7574",
                " 1111111111111111111111111111111111111111111111111111111111111111",
                " 22222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222",
            ),
        ),
        (PeerMessage::Heartbeat, "00000001 03"),
        (
            PeerMessage::ListMachines(ListMachines { workspace: None }),
            "00000002 04 00",
        ),
        (
            PeerMessage::ListMachines(ListMachines {
                workspace: Some("prod".into()),
            }),
            "00000007 04 01 04 70726f64",
        ),
        (PeerMessage::Goodbye, "00000001 05"),
        (
            PeerMessage::OpenStream(OpenStream {
                workspace: Some("prod".into()),
                machine: "web".into(),
                kind: 2,
            }),
            "0000000c 06 01 04 70726f64 03 776562 02",
        ),
        (
            PeerMessage::OpenRoute(OpenStream {
                workspace: None,
                machine: "web".into(),
                kind: 1,
            }),
            "00000007 07 00 03 776562 01",
        ),
        (
            PeerMessage::LockQuery(LockQuery {
                workspace: Some("prod".into()),
                items: true,
            }),
            "00000008 08 01 04 70726f64 01",
        ),
        (
            PeerMessage::LockSubmit(LockSubmit {
                workspace: None,
                submission: Submission::MemberCertificate(vec![0xbe, 0xef]),
            }),
            "00000006 09 00 02 02 beef",
        ),
        (
            PeerMessage::LockSubmit(LockSubmit {
                workspace: None,
                submission: Submission::AdminCandidate(KeyBytes([0x11; 32])),
            }),
            "00000023 09 00 05 1111111111111111111111111111111111111111111111111111111111111111",
        ),
        (
            PeerMessage::Enrol(KeyBytes([0x11; 32])),
            "00000021 0a 1111111111111111111111111111111111111111111111111111111111111111",
        ),
        (
            PeerMessage::EnrolProof(vec![0xca, 0xfe]),
            "00000004 0b 02 cafe",
        ),
    ]
}

fn relay_samples() -> Vec<(RelayMessage, &'static str)> {
    vec![
        (
            RelayMessage::Challenge(Challenge { nonce: [0xab; 32] }),
            "00000021 00 abababababababababababababababababababababababababababababababab",
        ),
        (
            RelayMessage::Registered(Registered {
                machine_id: IdBytes([0x33; 16]),
                fleet_id: IdBytes([0x44; 16]),
                heartbeat_interval_secs: 30,
                trust_key: KeyBytes([0x55; 32]),
            }),
            "00000042 01 33333333333333333333333333333333 44444444444444444444444444444444 1e 5555555555555555555555555555555555555555555555555555555555555555",
        ),
        (
            RelayMessage::Welcome(Welcome {
                principal: "user a".into(),
                fleets: vec!["prod".into(), "dev".into()],
            }),
            "00000012 02 06 757365722061 02 04 70726f64 03 646576",
        ),
        (RelayMessage::HeartbeatAck, "00000001 03"),
        (RelayMessage::Machines(vec![]), "00000002 04 00"),
        (
            RelayMessage::Machines(vec![sample_machine()]),
            concat!(
                "00000059 04 01 33333333333333333333333333333333 01 68 01 6e",
                " 1111111111111111111111111111111111111111111111111111111111111111",
                " 01 01 80e2cfaa06 05 6c696e7578 05 61726d3634 05 302e312e30 01 03 656e76 04 70726f64",
            ),
        ),
        (
            RelayMessage::Error(ErrorMessage {
                code: ErrorCode::AUTHENTICATION_FAILED,
                message: "no".into(),
            }),
            "00000005 05 04 02 6e6f",
        ),
        (
            RelayMessage::StreamReady(StreamReady {
                channel_id: [0x11; 16],
                fleet_id: IdBytes([0x22; 16]),
                machine: MachineInfo {
                    id: IdBytes([0x33; 16]),
                    hostname: "w".into(),
                    name: "w".into(),
                    public_key: KeyBytes([0x44; 32]),
                    online: true,
                    last_seen: None,
                    os: "l".into(),
                    arch: "a".into(),
                    agent_version: "1".into(),
                    labels: vec![],
                },
                capability: vec![0xca, 0xfe],
            }),
            "00000061 06 11111111111111111111111111111111 22222222222222222222222222222222 33333333333333333333333333333333 01 77 01 77 4444444444444444444444444444444444444444444444444444444444444444 01 00 01 6c 01 61 01 31 00 02 cafe",
        ),
        (
            RelayMessage::IncomingStream(StreamHeader {
                channel_id: [0x11; 16],
                fleet_id: IdBytes([0x22; 16]),
                kind: 2,
                client_key: KeyBytes([0x33; 32]),
            }),
            "00000042 07 11111111111111111111111111111111 22222222222222222222222222222222 02 3333333333333333333333333333333333333333333333333333333333333333",
        ),
        (
            RelayMessage::Candidates(vec![Candidate {
                id: IdBytes([0x33; 16]),
                hostname: "web-1".into(),
                name: "w".into(),
            }]),
            "0000001a 08 01 33333333333333333333333333333333 05 7765622d31 01 77",
        ),
        (RelayMessage::Candidates(vec![]), "00000002 08 00"),
        (
            RelayMessage::RouteReady(Box::new(RouteReady {
                channel_id: [0x11; 16],
                fleet_id: IdBytes([0x22; 16]),
                machine: MachineInfo {
                    id: IdBytes([0x33; 16]),
                    hostname: "w".into(),
                    name: "w".into(),
                    public_key: KeyBytes([0x44; 32]),
                    online: true,
                    last_seen: None,
                    os: "l".into(),
                    arch: "a".into(),
                    agent_version: "1".into(),
                    labels: vec![],
                },
                capability: vec![0xca, 0xfe],
                lock: Some(RouteLock {
                    authority: vec![vec![0x01]],
                    revocations: None,
                    machine_certificate: Some(vec![0x02]),
                    member_certificate: None,
                }),
            })),
            "0000006a 09 11111111111111111111111111111111 22222222222222222222222222222222 33333333333333333333333333333333 01 77 01 77 4444444444444444444444444444444444444444444444444444444444444444 01 00 01 6c 01 61 01 31 00 02 cafe 01 01 01 01 00 01 01 02 00",
        ),
        (
            RelayMessage::FleetLock(FleetLockState {
                fleet_id: IdBytes([0x22; 16]),
                authority: vec![],
                revocations: Some(vec![0x05]),
            }),
            "00000015 0a 22222222222222222222222222222222 00 01 01 05",
        ),
        (
            RelayMessage::LockItems(vec![
                LockItem::EnrolmentKey {
                    authorization: vec![0x07],
                    used: 2,
                },
                LockItem::ClientKey {
                    public_key: KeyBytes([0x11; 32]),
                    principal: "u".into(),
                },
            ]),
            "00000029 0b 02 02 01 07 02 03 1111111111111111111111111111111111111111111111111111111111111111 01 75",
        ),
        (
            RelayMessage::LockAccepted("ok".into()),
            "00000004 0c 02 6f6b",
        ),
        (
            RelayMessage::EnrolAuthorization(vec![0x09]),
            "00000003 0d 01 09",
        ),
        (RelayMessage::Enrolled, "00000001 0e"),
        (
            RelayMessage::MoreMachines(vec![sample_machine()]),
            concat!(
                "00000059 0f 01 33333333333333333333333333333333 01 68 01 6e",
                " 1111111111111111111111111111111111111111111111111111111111111111",
                " 01 01 80e2cfaa06 05 6c696e7578 05 61726d3634 05 302e312e30 01 03 656e76 04 70726f64",
            ),
        ),
        (RelayMessage::MoreMachines(vec![]), "00000002 0f 00"),
        (
            RelayMessage::GoAway(GoAway {
                reconnect_after_ms: 1_000,
                spread_ms: 0,
            }),
            "00000004 10 e807 00",
        ),
        (
            RelayMessage::GoAway(GoAway {
                reconnect_after_ms: 500,
                spread_ms: 30_000,
            }),
            "00000006 10 f403 b0ea01",
        ),
    ]
}

fn unhex(text: &str) -> Vec<u8> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(compact).unwrap()
}

#[test]
fn golden_peer_messages() {
    for (message, golden) in peer_samples() {
        let bytes = encode(&message).unwrap();
        assert_eq!(
            hex::encode(&bytes),
            hex::encode(unhex(golden)),
            "{message:?}"
        );
        assert_eq!(encoded_len(&message).unwrap(), bytes.len());
        let decoded: PeerMessage = FrameDecoder::new()
            .decode(&mut bytes.as_slice())
            .unwrap()
            .unwrap();
        assert_eq!(decoded, message);
    }
}

#[test]
fn golden_relay_messages() {
    for (message, golden) in relay_samples() {
        let bytes = encode(&message).unwrap();
        assert_eq!(
            hex::encode(&bytes),
            hex::encode(unhex(golden)),
            "{message:?}"
        );
        assert_eq!(encoded_len(&message).unwrap(), bytes.len());
        let decoded: RelayMessage = FrameDecoder::new()
            .decode(&mut bytes.as_slice())
            .unwrap()
            .unwrap();
        assert_eq!(decoded, message);
    }
}

/// A credential text as the CLI and agents send it; its secret part must never show in `Debug` output.
const SECRET_CREDENTIAL: &str =
    "cmdop_ak_aaaaaaaaaaaaaaaaaaaaaaaaaa_s3cr3ts3cr3ts3cr3ts3cr3ts3cr3ts3cr3t";

/// Every peer message, one of each variant, carrying [`SECRET_CREDENTIAL`] wherever a credential travels. The
/// match makes this fail to compile when a variant is added, so the new one is covered too.
fn every_peer_message_with_a_secret() -> Vec<PeerMessage> {
    let messages: Vec<PeerMessage> = peer_samples()
        .into_iter()
        .map(|(message, _)| match message {
            PeerMessage::AgentLogin(mut login) => {
                login.credential = SECRET_CREDENTIAL.into();
                PeerMessage::AgentLogin(login)
            }
            PeerMessage::ClientLogin(mut login) => {
                login.credential = SECRET_CREDENTIAL.into();
                PeerMessage::ClientLogin(login)
            }
            other => other,
        })
        .collect();
    for message in &messages {
        match message {
            PeerMessage::Hello(_)
            | PeerMessage::AgentLogin(_)
            | PeerMessage::ClientLogin(_)
            | PeerMessage::Heartbeat
            | PeerMessage::ListMachines(_)
            | PeerMessage::Goodbye
            | PeerMessage::OpenStream(_)
            | PeerMessage::OpenRoute(_)
            | PeerMessage::LockQuery(_)
            | PeerMessage::LockSubmit(_)
            | PeerMessage::Enrol(_)
            | PeerMessage::EnrolProof(_) => {}
        }
    }
    messages
}

#[test]
fn debug_output_of_every_wire_message_holds_no_secret() {
    let secret_part = SECRET_CREDENTIAL.rsplit('_').next().unwrap();
    let mut shown = Vec::new();
    for message in every_peer_message_with_a_secret() {
        shown.push(format!("{message:?}"));
        shown.push(format!("{message:#?}"));
        // The login message types on their own, as a log line of a driver would print them.
        match &message {
            PeerMessage::AgentLogin(login) => {
                shown.push(format!("{login:?} {:?}", login.credential))
            }
            PeerMessage::ClientLogin(login) => {
                shown.push(format!("{login:?} {:?}", login.credential))
            }
            _ => {}
        }
    }
    // Relay messages carry no credential, but they are formatted in the same logs: all of them, for the record.
    for (message, _) in relay_samples() {
        shown.push(format!("{message:?}"));
    }
    for text in &shown {
        assert!(
            !text.contains(secret_part),
            "a credential's secret shows in Debug output: {text}"
        );
    }
    // Redacted, not dropped: the field is still there to say a credential was sent.
    assert!(shown.iter().any(|text| text.contains("credential")));
}

#[test]
fn oversized_length_prefix_is_refused_before_the_body_arrives() {
    let mut decoder = FrameDecoder::new();
    let prefix = u32::try_from(MAX_FRAME_SIZE + 1).unwrap().to_be_bytes();
    let result = decoder.decode::<PeerMessage>(&mut prefix.as_slice());
    assert_eq!(
        result,
        Err(WireError::FrameTooLarge {
            len: MAX_FRAME_SIZE + 1
        })
    );
    let huge = u32::MAX.to_be_bytes();
    let result = FrameDecoder::new().decode::<PeerMessage>(&mut huge.as_slice());
    assert!(matches!(result, Err(WireError::FrameTooLarge { .. })));
}

#[test]
fn trailing_bytes_inside_a_frame_are_refused() {
    // A heartbeat (one byte) in a frame that claims two bytes.
    let frame = [0, 0, 0, 2, 3, 0];
    let result = FrameDecoder::new().decode::<PeerMessage>(&mut frame.as_slice());
    assert_eq!(result, Err(WireError::TrailingBytes { len: 1 }));
}

#[test]
fn overlong_varints_are_refused_so_every_message_has_one_encoding() {
    // Found by the peer_message and relay_message fuzz targets: `Heartbeat` (variant 3) with its tag written
    // as the two-byte varint 83 00. A message must decode only from the bytes `encode` produces.
    for frame in [
        vec![0, 0, 0, 2, 0x83, 0x00],
        // Hello { version: 1 (as 81 00), role: Agent, client_software: "" }.
        vec![0, 0, 0, 5, 0, 0x81, 0x00, 0, 0],
    ] {
        let peer = FrameDecoder::new().decode::<PeerMessage>(&mut frame.as_slice());
        assert_eq!(peer, Err(WireError::NonCanonical), "{frame:02x?}");
        let relay = FrameDecoder::new().decode::<RelayMessage>(&mut frame.as_slice());
        assert!(relay.is_err(), "{frame:02x?}");
    }
    // The canonical forms still decode.
    let heartbeat = [0, 0, 0, 1, 3];
    assert_eq!(
        FrameDecoder::new().decode::<PeerMessage>(&mut heartbeat.as_slice()),
        Ok(Some(PeerMessage::Heartbeat))
    );
}

proptest! {
    #[test]
    fn whatever_decodes_re_encodes_to_the_same_bytes(body in proptest::collection::vec(any::<u8>(), 1..64)) {
        if let Ok(message) = decode_body::<PeerMessage>(&body) {
            let frame = encode(&message).unwrap();
            prop_assert_eq!(&frame[LENGTH_PREFIX_LEN..], &body[..]);
        }
        if let Ok(message) = decode_body::<RelayMessage>(&body) {
            let frame = encode(&message).unwrap();
            prop_assert_eq!(&frame[LENGTH_PREFIX_LEN..], &body[..]);
        }
    }
}

#[test]
fn empty_frames_and_unknown_variants_are_malformed() {
    let empty = [0, 0, 0, 0];
    assert_eq!(
        FrameDecoder::new().decode::<PeerMessage>(&mut empty.as_slice()),
        Err(WireError::Malformed)
    );
    let unknown = [0, 0, 0, 1, 0x7f];
    assert_eq!(
        FrameDecoder::new().decode::<PeerMessage>(&mut unknown.as_slice()),
        Err(WireError::Malformed)
    );
}

#[test]
fn encoding_refuses_messages_over_the_limit() {
    let message = PeerMessage::Hello(Hello {
        version: PROTOCOL_VERSION,
        role: Role::Agent,
        client_software: "x".repeat(MAX_FRAME_SIZE),
    });
    assert!(matches!(
        encode(&message),
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[test]
fn the_most_candidates_of_the_largest_size_fit_one_frame() {
    let largest = Candidate {
        id: IdBytes([0xff; 16]),
        hostname: "h".repeat(253),
        // 64 characters of 4 bytes each: the longest display name cmdop-fleet accepts.
        name: "\u{1F600}".repeat(64),
    };
    let message = RelayMessage::Candidates(vec![largest; MAX_CANDIDATES]);
    // `encode` refuses a body over MAX_FRAME_SIZE.
    let frame = encode(&message).unwrap();
    assert!(frame.len() <= LENGTH_PREFIX_LEN + MAX_FRAME_SIZE);
}

#[test]
fn a_fleet_too_large_for_one_frame_is_listed_in_parts_that_each_fit() {
    let largest = MachineInfo {
        id: IdBytes([0xff; 16]),
        hostname: "h".repeat(253),
        // 64 characters of 4 bytes each: the longest display name, OS, architecture and version accepted.
        name: "\u{1F600}".repeat(64),
        public_key: KeyBytes([0xee; 32]),
        online: true,
        last_seen: Some(u64::MAX),
        os: "\u{1F600}".repeat(64),
        arch: "\u{1F600}".repeat(64),
        agent_version: "\u{1F600}".repeat(64),
        // The most labels cmdop-fleet accepts, each with the longest key and value.
        labels: (0..16)
            .map(|i| (format!("{i:02}{}", "k".repeat(61)), "v".repeat(63)))
            .collect(),
    };
    for (machines, template) in [
        (10_000, sample_machine()),
        (500, largest),
        (1, sample_machine()),
        (0, sample_machine()),
    ] {
        let answer = machines_answer(vec![template.clone(); machines]);
        let (last, parts) = answer.split_last().unwrap();
        let mut listed = 0;
        for part in parts {
            let RelayMessage::MoreMachines(part) = part else {
                panic!("{part:?}");
            };
            assert!(!part.is_empty());
            listed += part.len();
        }
        let RelayMessage::Machines(rest) = last else {
            panic!("{last:?}");
        };
        listed += rest.len();
        assert_eq!(listed, machines);
        for message in &answer {
            // `encode` refuses a body over MAX_FRAME_SIZE.
            let frame = encode(message).unwrap();
            assert!(frame.len() <= LENGTH_PREFIX_LEN + MAX_FRAME_SIZE);
        }
        if machines == 10_000 {
            // Parts are full: no more frames than the bytes need, plus one.
            let bytes: usize = answer.iter().map(|m| encoded_len(m).unwrap()).sum();
            assert!(
                answer.len() <= bytes / MAX_FRAME_SIZE + 2,
                "{} parts",
                answer.len()
            );
        }
    }
}

#[test]
fn pipelined_frames_decode_one_at_a_time() {
    let mut bytes = encode(&PeerMessage::Heartbeat).unwrap();
    bytes.extend(encode(&PeerMessage::Goodbye).unwrap());
    let mut input = bytes.as_slice();
    let mut decoder = FrameDecoder::new();
    assert_eq!(
        decoder.decode(&mut input).unwrap(),
        Some(PeerMessage::Heartbeat)
    );
    assert_eq!(input.len(), 5);
    assert_eq!(
        decoder.decode(&mut input).unwrap(),
        Some(PeerMessage::Goodbye)
    );
    assert!(input.is_empty());
}

#[test]
fn login_transcript_layout() {
    let transcript = login_transcript(&[1; 32], &[2; 32], &KeyBytes([3; 32]));
    assert_eq!(
        &transcript[..LOGIN_TRANSCRIPT_LABEL.len()],
        LOGIN_TRANSCRIPT_LABEL
    );
    assert_eq!(transcript.len(), LOGIN_TRANSCRIPT_LABEL.len() + 96);
    assert_eq!(transcript[LOGIN_TRANSCRIPT_LABEL.len()], 1);
    assert_eq!(transcript[LOGIN_TRANSCRIPT_LABEL.len() + 32], 2);
    assert_eq!(transcript[LOGIN_TRANSCRIPT_LABEL.len() + 64], 3);
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9 _.-]{0,24}"
}

fn arb_peer() -> impl Strategy<Value = PeerMessage> {
    prop_oneof![
        (any::<u16>(), any::<bool>(), text()).prop_map(|(version, agent, client_software)| {
            PeerMessage::Hello(Hello {
                version,
                role: if agent { Role::Agent } else { Role::Client },
                client_software,
            })
        }),
        (
            text(),
            text(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            text(),
            proptest::option::of(text()),
            proptest::collection::vec(text(), 0..4)
        )
            .prop_map(
                |(credential, workspace, key, half, hostname, display_name, auth_capabilities)| {
                    let mut signature = [0u8; 64];
                    signature[..32].copy_from_slice(&half);
                    signature[32..].copy_from_slice(&key);
                    PeerMessage::AgentLogin(AgentLogin {
                        credential: credential.into(),
                        workspace,
                        public_key: KeyBytes(key),
                        signature: SignatureBytes(signature),
                        hostname,
                        display_name,
                        os: "linux".into(),
                        arch: "x86_64".into(),
                        agent_version: "1".into(),
                        auth_capabilities,
                        labels: vec![("role".into(), "web".into())],
                    })
                }
            ),
        (text(), any::<[u8; 32]>()).prop_map(|(credential, key)| PeerMessage::ClientLogin(
            ClientLogin {
                credential: credential.into(),
                public_key: KeyBytes(key),
                signature: SignatureBytes([key[0]; 64]),
            }
        )),
        Just(PeerMessage::Heartbeat),
        proptest::option::of(text())
            .prop_map(|workspace| PeerMessage::ListMachines(ListMachines { workspace })),
        Just(PeerMessage::Goodbye),
        (proptest::option::of(text()), text(), any::<u8>()).prop_map(
            |(workspace, machine, kind)| {
                PeerMessage::OpenStream(OpenStream {
                    workspace,
                    machine,
                    kind,
                })
            }
        ),
        (proptest::option::of(text()), text(), any::<u8>()).prop_map(
            |(workspace, machine, kind)| {
                PeerMessage::OpenRoute(OpenStream {
                    workspace,
                    machine,
                    kind,
                })
            }
        ),
        (proptest::option::of(text()), any::<bool>())
            .prop_map(|(workspace, items)| PeerMessage::LockQuery(LockQuery { workspace, items })),
        (proptest::option::of(text()), bytes(), 0u8..6).prop_map(|(workspace, doc, which)| {
            let submission = match which {
                0 => Submission::Authority(doc),
                1 => Submission::MachineCertificate(doc),
                2 => Submission::MemberCertificate(doc),
                3 => Submission::EnrolmentAuthorization(doc),
                4 => Submission::RevocationList(doc),
                _ => Submission::AdminCandidate(KeyBytes([doc.len() as u8; 32])),
            };
            PeerMessage::LockSubmit(LockSubmit {
                workspace,
                submission,
            })
        }),
        any::<[u8; 32]>().prop_map(|key| PeerMessage::Enrol(KeyBytes(key))),
        bytes().prop_map(PeerMessage::EnrolProof),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..80)
}

fn arb_lock_relay() -> impl Strategy<Value = RelayMessage> {
    prop_oneof![
        (
            any::<[u8; 16]>(),
            proptest::collection::vec(bytes(), 0..3),
            proptest::option::of(bytes())
        )
            .prop_map(|(fleet, authority, revocations)| {
                RelayMessage::FleetLock(FleetLockState {
                    fleet_id: IdBytes(fleet),
                    authority,
                    revocations,
                })
            }),
        proptest::collection::vec(
            prop_oneof![
                bytes().prop_map(LockItem::MachineCertificate),
                bytes().prop_map(LockItem::MemberCertificate),
                (bytes(), any::<u32>()).prop_map(|(authorization, used)| {
                    LockItem::EnrolmentKey {
                        authorization,
                        used,
                    }
                }),
                (any::<[u8; 32]>(), text()).prop_map(|(key, principal)| LockItem::ClientKey {
                    public_key: KeyBytes(key),
                    principal
                }),
                any::<[u8; 32]>().prop_map(|key| LockItem::AdminCandidate(KeyBytes(key))),
            ],
            0..4
        )
        .prop_map(RelayMessage::LockItems),
        text().prop_map(RelayMessage::LockAccepted),
        bytes().prop_map(RelayMessage::EnrolAuthorization),
        Just(RelayMessage::Enrolled),
    ]
}

fn arb_relay() -> impl Strategy<Value = RelayMessage> {
    let machine = || {
        (
            any::<[u8; 16]>(),
            text(),
            text(),
            any::<bool>(),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(id, hostname, name, online, last_seen)| MachineInfo {
                id: IdBytes(id),
                hostname,
                name,
                public_key: KeyBytes([id[0]; 32]),
                online,
                last_seen,
                os: "linux".into(),
                arch: "arm64".into(),
                agent_version: "1".into(),
                labels: vec![(format!("k{}", id[1]), "x".into())],
            })
    };
    prop_oneof![
        any::<[u8; 32]>().prop_map(|nonce| RelayMessage::Challenge(Challenge { nonce })),
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u32>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(m, f, heartbeat_interval_secs, k)| {
                RelayMessage::Registered(Registered {
                    machine_id: IdBytes(m),
                    fleet_id: IdBytes(f),
                    heartbeat_interval_secs,
                    trust_key: KeyBytes(k),
                })
            }),
        (text(), proptest::collection::vec(text(), 0..4))
            .prop_map(|(principal, fleets)| RelayMessage::Welcome(Welcome { principal, fleets })),
        Just(RelayMessage::HeartbeatAck),
        proptest::collection::vec(machine(), 0..4).prop_map(RelayMessage::Machines),
        (any::<u16>(), text()).prop_map(|(code, message)| RelayMessage::Error(ErrorMessage {
            code: ErrorCode(code),
            message
        })),
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            machine(),
            proptest::collection::vec(any::<u8>(), 0..80)
        )
            .prop_map(
                |(channel_id, fleet, machine, capability)| RelayMessage::StreamReady(StreamReady {
                    channel_id,
                    fleet_id: IdBytes(fleet),
                    machine,
                    capability,
                })
            ),
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u8>(),
            any::<[u8; 32]>()
        )
            .prop_map(
                |(channel_id, fleet, kind, key)| RelayMessage::IncomingStream(StreamHeader {
                    channel_id,
                    fleet_id: IdBytes(fleet),
                    kind,
                    client_key: KeyBytes(key),
                })
            ),
        proptest::collection::vec(
            (any::<[u8; 16]>(), text(), text()).prop_map(|(id, hostname, name)| Candidate {
                id: IdBytes(id),
                hostname,
                name,
            }),
            0..4
        )
        .prop_map(RelayMessage::Candidates),
        (
            any::<[u8; 16]>(),
            machine(),
            bytes(),
            proptest::option::of((
                proptest::collection::vec(bytes(), 0..3),
                proptest::option::of(bytes()),
                proptest::option::of(bytes()),
                proptest::option::of(bytes())
            ))
        )
            .prop_map(|(channel_id, machine, capability, lock)| {
                RelayMessage::RouteReady(Box::new(RouteReady {
                    channel_id,
                    fleet_id: IdBytes(channel_id),
                    machine,
                    capability,
                    lock: lock.map(
                        |(authority, revocations, machine_certificate, member_certificate)| {
                            RouteLock {
                                authority,
                                revocations,
                                machine_certificate,
                                member_certificate,
                            }
                        },
                    ),
                }))
            }),
        arb_lock_relay(),
        proptest::collection::vec(machine(), 0..4).prop_map(RelayMessage::MoreMachines),
        (any::<u32>(), any::<u32>()).prop_map(|(reconnect_after_ms, spread_ms)| {
            RelayMessage::GoAway(GoAway {
                reconnect_after_ms,
                spread_ms,
            })
        }),
    ]
}

proptest! {
    #[test]
    fn peer_round_trip_and_exact_len(message in arb_peer(), split in 0usize..200) {
        let bytes = encode(&message).unwrap();
        prop_assert_eq!(encoded_len(&message).unwrap(), bytes.len());
        // Arbitrary chunking must not change the result.
        let split = split.min(bytes.len());
        let mut decoder = FrameDecoder::new();
        let mut first = &bytes[..split];
        let early: Option<PeerMessage> = decoder.decode(&mut first).unwrap();
        let decoded = match early {
            Some(decoded) => decoded,
            None => decoder.decode(&mut &bytes[split..]).unwrap().unwrap(),
        };
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn relay_round_trip_and_exact_len(message in arb_relay()) {
        let bytes = encode(&message).unwrap();
        prop_assert_eq!(encoded_len(&message).unwrap(), bytes.len());
        let decoded: RelayMessage = FrameDecoder::new().decode(&mut bytes.as_slice()).unwrap().unwrap();
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn decode_never_panics_on_random_input(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = FrameDecoder::new().decode::<PeerMessage>(&mut bytes.as_slice());
        let _ = FrameDecoder::new().decode::<RelayMessage>(&mut bytes.as_slice());
        let _ = decode_body::<PeerMessage>(&bytes);
        let _ = decode_body::<RelayMessage>(&bytes);
    }

    #[test]
    fn decode_never_panics_on_perturbed_messages(
        message in arb_peer(),
        reply in arb_relay(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        for mut bytes in [encode(&message).unwrap(), encode(&reply).unwrap()] {
            for (index, value) in &flips {
                let at = index.index(bytes.len());
                bytes[at] ^= value;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = FrameDecoder::new().decode::<PeerMessage>(&mut bytes.as_slice());
            let _ = FrameDecoder::new().decode::<RelayMessage>(&mut bytes.as_slice());
        }
    }
}
