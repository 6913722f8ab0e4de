//! `cmdop connect MACHINE` driven through a real pseudo-terminal, as a person would use it.

use std::process::Command;
use std::time::{Duration, Instant};

use cmdop_tests::terminal::Terminal;
use cmdop_tests::{Contour, run};
use serde_json::Value;
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(30);

/// `cmdop … connect <args>` as client `client`, with the member key.
fn connect(c: &Contour, client: &str, args: &[&str]) -> Command {
    let mut command = c.cli_with_key(client, &c.member_key("prod"));
    command.arg("connect").args(args);
    command
}

/// `cmdop connect web-1 <args>` in a terminal of 100x30.
fn attach(c: &Contour, client: &str, args: &[&str]) -> Terminal {
    let mut all = vec!["web-1"];
    all.extend_from_slice(args);
    Terminal::spawn(&connect(c, client, &all), 100, 30)
}

/// The sessions on web-1, as `cmdop connect sessions --json` lists them.
fn sessions(c: &Contour) -> Vec<Value> {
    let output = run(&mut connect(c, "alice", &["sessions", "web-1", "--json"]));
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Types a command line and waits for a marker its output (not its echo) contains.
fn type_and_expect(terminal: &mut Terminal, line: &str, marker: &str) -> String {
    let mark = terminal.mark();
    terminal.send(format!("{line}\r").as_bytes());
    terminal.expect_after(mark, marker, WAIT)
}

#[test]
fn a_session_behaves_like_a_local_terminal() {
    let c = Contour::with_machine();
    let mut t = attach(&c, "alice", &[]);
    // Size, terminal device and TERM come from the client's terminal.
    type_and_expect(&mut t, "stty size; echo M-$((6*7))", "M-42");
    assert!(t.text().contains("30 100"), "{}", t.text());
    type_and_expect(&mut t, "tty | sed 's/^/T=/'", "T=/dev/pts/");
    type_and_expect(&mut t, "echo TERM=$TERM", "TERM=xterm-256color");

    // A resize reaches the remote terminal (SIGWINCH → Resize).
    t.resize(120, 40);
    cmdop_tests::eventually(WAIT, "the remote terminal to be 40x120", || {
        let mark = t.mark();
        t.send(b"stty size\r");
        std::thread::sleep(Duration::from_millis(300));
        let text = String::from_utf8_lossy(&t.output()[mark..]).into_owned();
        text.contains("40 120").then_some(())
    });

    // Ctrl-C goes to the remote foreground program as a byte, as in ssh.
    let mark = t.mark();
    t.send(b"sleep 100 && echo NOT-INTERRUPTED\r");
    t.expect_after(mark, "NOT-INTERRUPTED", WAIT); // the echo of the typed line
    std::thread::sleep(Duration::from_millis(500));
    t.send(b"\x03");
    type_and_expect(&mut t, "echo rc=$?", "rc=130");
    assert!(!t.text().contains("NOT-INTERRUPTED\r\nNOT-INTERRUPTED"));

    // A full-screen program switches to the alternate screen, draws, and restores on exit.
    let curses = "python3 -c 'import curses; curses.wrapper(lambda s: (s.addstr(2, 4, \"FULL\" + \"SCREEN\"), s.refresh(), s.getch()))'";
    let mark = t.mark();
    t.send(format!("{curses}\r").as_bytes());
    let drawn = t.expect_after(mark, "FULLSCREEN", WAIT);
    assert!(
        drawn.contains("\u{1b}[?1049h"),
        "no alternate screen: {drawn:?}"
    );
    t.send(b"q");
    t.expect_after(mark, "\u{1b}[?1049l", WAIT);
    type_and_expect(&mut t, "echo back=$((1+1))", "back=2");

    // Leaving the shell ends the session, and cmdop exits with the shell's code.
    t.send(b"exit 7\r");
    assert_eq!(t.wait(WAIT), 7);
    assert!(sessions(&c).is_empty(), "an ended session is forgotten");
}

#[test]
fn detach_leaves_the_session_running_and_reattach_shows_what_happened() {
    let c = Contour::with_machine();
    let mut t = attach(&c, "alice", &["--session", "work"]);
    type_and_expect(&mut t, "echo ready-$((1+1))", "ready-2");
    t.send(b"(sleep 1; echo made-while-away-$((40+2))) &\r");
    std::thread::sleep(Duration::from_millis(200));
    t.send(b"~.");
    assert_eq!(t.wait(WAIT), 0);
    assert!(
        t.text()
            .contains("Reattach with: cmdop connect web-1 --session work"),
        "{}",
        t.text()
    );

    let listed = sessions(&c);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "work");
    assert_eq!(listed[0]["attached"], 0);
    assert!(listed[0]["exit_code"].is_null());

    std::thread::sleep(Duration::from_millis(1500));
    let mut again = attach(&c, "alice", &["--session", "work"]);
    let shown = again.expect("made-while-away-42", WAIT);
    // Resumed where this terminal left off: the earlier output is not replayed.
    assert!(!shown.contains("ready-2"), "{shown:?}");
    again.send(b"\r~?");
    again.expect("detach", WAIT);
    type_and_expect(&mut again, "echo still-$((3+4))", "still-7");

    // Ending it from outside ends the attached client too.
    let killed = run(&mut connect(&c, "bob", &["kill", "web-1", "work"]));
    assert!(killed.status.success(), "{killed:?}");
    let code = again.wait(WAIT);
    assert_eq!(code, 129, "SIGHUP ends the shell: 128+1");

    // Without a machine, on a terminal, a picker offers the fleet's machines.
    let mut picker = Terminal::spawn(&connect(&c, "alice", &[]), 100, 30);
    picker.expect("machine", WAIT);
    picker.send(b"web");
    std::thread::sleep(Duration::from_millis(300));
    picker.send(b"\r");
    type_and_expect(&mut picker, "echo picked-$((1+1))", "picked-2");
    picker.send(b"exit 4\r");
    assert_eq!(picker.wait(WAIT), 4);

    // Without a machine and without a terminal, cmdop asks for one.
    let output = run(&mut connect(&c, "alice", &[]));
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no machine given"),
        "{output:?}"
    );
}

/// The digit-only lines of a terminal transcript, with `\r\n` line ends.
fn number_lines(transcript: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(transcript)
        // Bash turns bracketed paste off before running a command; that sequence is not part of any line.
        .replace("\u{1b}[?2004l\r", "")
        .split('\n')
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()))
        .map(|line| line.parse().unwrap())
        .collect()
}

fn digest(numbers: &[u64]) -> String {
    let mut hash = Sha256::new();
    for n in numbers {
        hash.update(format!("{n}\n"));
    }
    hex::encode(hash.finalize())
}

#[test]
fn a_killed_client_resumes_with_complete_ordered_output() {
    let c = Contour::with_machine();
    let mut first = attach(&c, "alice", &["--session", "long"]);
    type_and_expect(&mut first, "echo ready-$((1+1))", "ready-2");
    first.send(b"seq 1 200000\r");
    first.expect("\r\n20000\r\n", WAIT);
    first.kill_hard();
    let before = first.output();
    assert!(
        !String::from_utf8_lossy(&before).contains("\r\n200000\r\n"),
        "killed too late to test anything"
    );

    let mut second = attach(&c, "alice", &["--session", "long"]);
    second.expect("\r\n200000\r\n", Duration::from_secs(60));
    type_and_expect(&mut second, "echo done-$((2+3))", "done-5");
    let after = second.output();
    let expected: Vec<u64> = (1..=200_000).collect();
    // The resume position is saved right after each write to the terminal. A SIGKILL that lands inside
    // that one write (or in the microseconds before its position is saved) leaves the terminal a little
    // ahead of the saved position, and that write is shown again: never a gap, never a reordering, at most
    // one write (32 KiB) repeated exactly at the seam. No two independent sinks can be committed atomically
    // against SIGKILL; every gentler ending (signals, network loss, relay restart) is exact.
    let seam = (0..=after.len().min(32 * 1024))
        .find(|&k| {
            before.ends_with(&after[..k]) && {
                let mut joined = before.clone();
                joined.extend_from_slice(&after[k..]);
                number_lines(&joined) == expected
            }
        })
        .unwrap_or_else(|| {
            let mut joined = before.clone();
            joined.extend_from_slice(&after);
            let numbers = number_lines(&joined);
            let first_gap = numbers
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(numbers.len().min(expected.len()));
            panic!(
                "output lost or reordered: {} lines instead of {}; first difference at index {first_gap}: {:?}",
                numbers.len(),
                expected.len(),
                &numbers[first_gap.saturating_sub(3)..(first_gap + 3).min(numbers.len())]
            )
        });
    let mut joined = before;
    joined.extend_from_slice(&after[seam..]);
    assert_eq!(digest(&number_lines(&joined)), digest(&expected));
    eprintln!("bytes repeated at the seam: {seam}");
    second.send(b"exit\r");
    assert_eq!(second.wait(WAIT), 0);
}

#[test]
fn a_relay_restart_costs_no_output() {
    let mut c = Contour::with_machine();
    let mut t = attach(&c, "alice", &["--session", "steady"]);
    type_and_expect(&mut t, "echo ready-$((1+1))", "ready-2");
    t.send(b"for i in $(seq 1 60); do echo line-$i; sleep 0.1; done; echo fin-$((5*5))\r");
    t.expect("line-5\r", WAIT);
    c.restart_relay();
    t.expect("fin-25", Duration::from_secs(60));
    // Bash turns bracketed paste off before running a command; that sequence is not part of any line.
    let text = t.text().replace("\u{1b}[?2004l\r", "");
    for i in 1..=60 {
        let line = format!("\nline-{i}\r\n");
        assert_eq!(
            text.matches(&line).count(),
            1,
            "line-{i} must appear exactly once:\n{}",
            text.escape_debug()
        );
    }
    assert!(text.contains("[cmdop] connection lost"), "{text}");
    type_and_expect(&mut t, "echo after-$((6+1))", "after-7");
    t.send(b"exit 0\r");
    assert_eq!(t.wait(WAIT), 0);
}

/// Issue 13 item 11: a relay stopped on purpose (SIGTERM: `systemctl restart`, an upgrade) must cost an attached
/// shell no more than one killed outright. It used to drain for its full 10 s holding the shell's stream,
/// then cut it. Now it tells its peers to go away and stops at once when only interactive streams are open.
/// Through a SIGTERM restart, a SIGKILL restart and an upgrade-style restart (a new binary at another path,
/// the old one stopped with SIGTERM), output keeps flowing with every line exactly once and typed input
/// reaches the shell again. The timings are printed.
#[test]
fn an_attached_shell_resumes_alike_after_sigterm_sigkill_and_an_upgrade() {
    let mut c = Contour::with_machine();
    let mut t = attach(&c, "alice", &["--session", "steady"]);
    type_and_expect(&mut t, "echo ready-$((1+1))", "ready-2");
    for (round, how) in ["sigterm", "sigkill", "upgrade"].into_iter().enumerate() {
        let mark = t.mark();
        t.send(
            format!("for i in $(seq 1 40); do echo {how}-$i; sleep 0.2; done; echo end-{how}-$((1+{round}))\r")
                .as_bytes(),
        );
        t.expect_after(mark, &format!("\n{how}-5\r"), WAIT);
        let restarted = Instant::now();
        let stopped_in = match how {
            "sigterm" => c.restart_relay_gracefully(),
            "sigkill" => {
                c.restart_relay();
                Duration::ZERO
            }
            _ => c.upgrade_relay(),
        };
        // Nothing but the shell was running: a graceful stop has nothing to wait for.
        assert!(
            stopped_in < Duration::from_secs(3),
            "{how}: the relay took {stopped_in:?} to stop with only a shell open"
        );
        t.expect_after(
            mark,
            &format!("end-{how}-{}", round + 1),
            Duration::from_secs(60),
        );
        let output_back = restarted.elapsed();
        // As a person would: type until the shell answers.
        let typed = Instant::now();
        let answered = format!("typed-after-{how}-7");
        let typing = t.mark();
        while !String::from_utf8_lossy(&t.output()[typing..]).contains(&answered) {
            assert!(
                typed.elapsed() < Duration::from_secs(30),
                "{how}: typed input never reached the shell:\n{}",
                t.text().escape_debug()
            );
            t.send(format!("echo typed-after-{how}-$((3+4))\r").as_bytes());
            std::thread::sleep(Duration::from_millis(500));
        }
        let answered_in = typed.elapsed();
        eprintln!(
            "{how}: old relay stopped in {stopped_in:?}; the loop's output complete {output_back:?} after the restart began; typed input answered {answered_in:?} after the new relay listened"
        );
        // Alike: once the new relay listens, the shell takes input again within seconds whichever way the old
        // one stopped (a SIGKILL restart takes well under one here).
        assert!(
            answered_in < Duration::from_secs(5),
            "{how}: typed input was answered only {answered_in:?} after the new relay listened"
        );
        let text = String::from_utf8_lossy(&t.output()[mark..]).replace("\u{1b}[?2004l\r", "");
        for i in 1..=40 {
            let line = format!("\n{how}-{i}\r\n");
            assert_eq!(
                text.matches(&line).count(),
                1,
                "{how}-{i} must appear exactly once:\n{}",
                text.escape_debug()
            );
        }
    }
    t.send(b"exit 0\r");
    assert_eq!(t.wait(WAIT), 0);
}

#[test]
fn two_clients_share_a_session_and_an_observer_cannot_type() {
    let c = Contour::with_machine();
    let mut owner = attach(&c, "alice", &["--session", "pair"]);
    type_and_expect(&mut owner, "echo ready-$((1+1))", "ready-2");
    let mut observer = attach(&c, "bob", &["--session", "pair", "--read-only"]);
    // The observer sees what was already there, then what the owner does.
    observer.expect("ready-2", WAIT);
    type_and_expect(&mut owner, "echo from-owner-$((2*3))", "from-owner-6");
    observer.expect("from-owner-6", WAIT);
    // The observer's keystrokes are ignored.
    observer.send(b"echo from-observer-$((3*3))\r");
    std::thread::sleep(Duration::from_millis(500));
    type_and_expect(&mut owner, "echo check-$((4*4))", "check-16");
    assert!(!owner.text().contains("from-observer"), "{}", owner.text());
    assert!(!observer.text().contains("from-observer-9"));
    let listed = sessions(&c);
    assert_eq!(listed[0]["attached"], 2, "{listed:?}");
    owner.send(b"exit 3\r");
    assert_eq!(owner.wait(WAIT), 3);
    assert_eq!(observer.wait(WAIT), 3);
}
