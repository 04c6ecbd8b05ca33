use std::path::Path;

use super::*;

/// A config whose state directory is a fresh temporary directory.
fn config(dir: &Path, queue: &str, poison_after: u32) -> Config {
    let text = format!(
        "[amqp]\nurl = \"amqp://guest:secret@127.0.0.1:5672/%2f\"\n[fpm]\naddress = \"127.0.0.1:9000\"\n\
         script_filename = \"/srv/index.php\"\n[subjects.event]\nqueue = \"{queue}\"\n\
         [agent]\npoison_after = {poison_after}\nstate_dir = \"{}\"\n",
        dir.display()
    );
    Config::from_toml(&text, Path::new("t.toml"), |_| None).unwrap()
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("amqp-agent-journal-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn journal_text(tracker: &Tracker) -> String {
    std::fs::read_to_string(tracker.path().unwrap()).unwrap()
}

#[tokio::test]
async fn the_start_record_is_on_disk_before_handling_and_done_follows() {
    let dir = temp_dir();
    let tracker = Tracker::open(&config(&dir, "q", 2)).unwrap();
    let a = tracker.begin("a", false).await;
    assert!(journal_text(&tracker).ends_with("S a\n"));
    let b = tracker.begin("b", false).await;
    drop(a);
    // `a` is done but `b` still in flight: the done record waits for the next write.
    assert!(journal_text(&tracker).ends_with("S a\nS b\n"));
    drop(b);
    // Nothing in flight: every done record is written.
    assert!(journal_text(&tracker).ends_with("S b\nD a\nD b\n"));
    let text = journal_text(&tracker);
    assert!(
        text.starts_with("# amqp-agent in-flight journal v1"),
        "{text}"
    );
    assert!(!text.contains("secret"), "no password in the file: {text}");
}

#[tokio::test]
async fn a_process_death_counts_and_the_nth_redelivery_is_poison() {
    let dir = temp_dir();
    let config = config(&dir, "q", 2);
    for crash in 1..=2 {
        // A tracker dropped without close() is a process that died (its lock goes with it).
        let tracker = Tracker::open(&config).unwrap();
        let tracked = tracker.begin("m", crash > 1).await;
        assert_eq!(tracked.poison(), None);
        std::mem::forget(tracked);
    }
    let tracker = Tracker::open(&config).unwrap();
    assert!(journal_text(&tracker).contains("C 2 "));
    let tracked = tracker.begin("m", true).await;
    assert_eq!(tracked.poison(), Some(2));
    // A poison message is not recorded as in flight.
    drop(tracked);
    assert!(!journal_text(&tracker).contains("R m"));
    // A fresh delivery of the same id (a replayed dead letter) is handled.
    assert_eq!(tracker.begin("m", false).await.poison(), None);
}

#[tokio::test]
async fn a_clean_stop_counts_nothing() {
    let dir = temp_dir();
    let config = config(&dir, "q", 1);
    let tracker = Tracker::open(&config).unwrap();
    std::mem::forget(tracker.begin("m", false).await);
    tracker.close();
    // After the stop nothing more is recorded.
    std::mem::forget(tracker.begin("n", false).await);
    drop(tracker);
    let tracker = Tracker::open(&config).unwrap();
    assert_eq!(tracker.begin("m", true).await.poison(), None);
    assert_eq!(tracker.begin("n", true).await.poison(), None);
}

#[test]
fn a_second_agent_takes_the_next_slot_and_other_queues_another_file() {
    let dir = temp_dir();
    let first = Tracker::open(&config(&dir, "q", 2)).unwrap();
    let second = Tracker::open(&config(&dir, "q", 2)).unwrap();
    let other = Tracker::open(&config(&dir, "other", 2)).unwrap();
    let (p1, p2, p3) = (
        first.path().unwrap(),
        second.path().unwrap(),
        other.path().unwrap(),
    );
    assert!(
        p2.to_string_lossy().ends_with(".1.journal"),
        "{}",
        p2.display()
    );
    assert_ne!(p1, p3);
    assert!(!p3.to_string_lossy().ends_with(".1.journal"));
    // The first slot is free again once its agent is gone. The lock goes with the last open
    // descriptor of its file, and a process that another test forks at that moment holds a
    // copy until it execs (`mount` in the full-disk test): wait for it, with a deadline.
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let third = Tracker::open(&config(&dir, "q", 2)).unwrap();
        if third.path().unwrap() == p1 {
            break;
        }
        drop(third);
        assert!(
            std::time::Instant::now() < deadline,
            "the first slot was not freed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[tokio::test]
async fn the_journal_is_compacted_when_it_grows() {
    let dir = temp_dir();
    let tracker = Tracker::open(&config(&dir, "q", 2)).unwrap();
    let keep = tracker.begin("kept-in-flight", false).await;
    let key = "k".repeat(200);
    for _ in 0..(COMPACT_AT as usize / 200 + 10) {
        drop(tracker.begin(&key, false).await);
    }
    let size = std::fs::metadata(tracker.path().unwrap()).unwrap().len();
    assert!(size < COMPACT_AT, "{size} bytes");
    // What was in flight survives the compaction.
    std::mem::forget(keep);
    let path = tracker.path().unwrap();
    drop(tracker);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("kept-in-flight"), "{text}");
}

#[tokio::test]
async fn off_means_no_file() {
    let dir = temp_dir().join("never");
    let tracker = Tracker::open(&config(&dir, "q", 0)).unwrap();
    assert_eq!(tracker.path(), None);
    assert_eq!(tracker.begin("m", true).await.poison(), None);
    assert!(!dir.exists());
}

#[test]
fn an_unusable_state_dir_is_named() {
    let file = temp_dir().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let e = Tracker::open(&config(&file, "q", 2))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("agent.state_dir") && e.contains("a-file"), "{e}");
}

#[tokio::test]
async fn a_suspect_runs_alone() {
    use futures_util::FutureExt as _;
    let dir = temp_dir();
    let config = config(&dir, "q", 2);
    {
        let tracker = Tracker::open(&config).unwrap();
        std::mem::forget(tracker.begin("s", false).await);
    }
    let tracker = Tracker::open(&config).unwrap();
    let other = tracker.begin("n", false).await;
    // The suspect waits while another message is in flight...
    assert!(tracker.begin("s", true).now_or_never().is_none());
    drop(other);
    let suspect = tracker.begin("s", true).await;
    assert_eq!(suspect.poison(), None);
    // ...and nothing else starts while it runs.
    assert!(tracker.begin("n", false).now_or_never().is_none());
    drop(suspect);
    assert!(tracker.begin("n", false).now_or_never().is_some());
}

/// A symlink planted where the journal writes (issue #22, hole 5): the agent must not write
/// through it.
#[test]
fn a_symlink_in_the_state_dir_is_refused_and_not_written_through() {
    let dir = temp_dir();
    let tracker = Tracker::open(&config(&dir, "q", 2)).unwrap();
    let path = tracker.path().unwrap();
    tracker.close();
    drop(tracker);
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let tmp = path.with_extension("journal.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    let opened = Tracker::open(&config(&dir, "q", 2));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(opened.is_err(), "a symlinked journal file is refused");
    std::fs::remove_file(&tmp).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    assert!(Tracker::open(&config(&dir, "q", 2)).is_err());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

/// As sshd's StrictModes: a state directory anyone may write to is refused.
#[test]
fn a_world_writable_state_dir_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = temp_dir();
    for mode in [0o777, 0o1777] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = Tracker::open(&config(&dir, "q", 2)).err().expect("refused");
        assert!(e.to_string().contains("writable by others"), "{e}");
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    Tracker::open(&config(&dir, "q", 2)).unwrap();
}

/// A full disk at start turns the protection off, loudly, instead of stopping the agent
/// (a 4 KiB tmpfs, filled; needs root to mount, as the test machine runs).
#[test]
fn a_full_disk_at_start_turns_protection_off_instead_of_refusing_to_start() {
    let dir = temp_dir();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4k,mode=0755", "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "this test mounts a tmpfs (root)");
    let fill = std::fs::write(dir.join("fill"), vec![0u8; 64 * 1024]);
    assert!(fill.is_err(), "the tmpfs is full");
    let tracker = Tracker::open(&config(&dir, "q", 2));
    let _ = std::process::Command::new("umount").arg(&dir).status();
    let tracker = tracker.expect("the agent starts");
    assert!(tracker.path().is_none(), "protection is off");
    assert!(
        !tracker.enabled(),
        "and nothing is journaled (the error log says why)"
    );
}

/// A batch takes one permit for all its entries. The gate is fair: a per-entry permit asked for
/// while a suspect queues would wait for the suspect, which waits for the batch (a deadlock of
/// every worker). With `begin_batch`, the suspect waits until the whole batch is done, and the
/// batch's start records go out in one write.
#[tokio::test]
async fn a_batch_holds_one_permit_and_a_suspect_waits_for_all_of_it() {
    use futures_util::FutureExt as _;
    let dir = temp_dir();
    let config = config(&dir, "q", 2);
    {
        let tracker = Tracker::open(&config).unwrap();
        std::mem::forget(tracker.begin("s", false).await);
    }
    let tracker = Tracker::open(&config).unwrap();
    let mut batch = tracker
        .begin_batch(&[("a", false), ("b", false), ("c", false)])
        .await;
    assert!(journal_text(&tracker).ends_with("S a\nS b\nS c\n"));
    assert!(batch.iter().all(|t| t.poison().is_none()));
    let mut suspect = Box::pin(tracker.begin("s", true));
    assert!(
        (&mut suspect).now_or_never().is_none(),
        "queued behind the batch"
    );
    // What one permit per entry would have done: wait behind the queued suspect.
    assert!(tracker.begin("x", false).now_or_never().is_none());
    batch.remove(0);
    batch.remove(0);
    assert!(
        (&mut suspect).now_or_never().is_none(),
        "c is still running"
    );
    drop(batch);
    let suspect = suspect.now_or_never().expect("runs once the batch is done");
    assert_eq!(suspect.poison(), None);
    assert!(journal_text(&tracker).contains("D c\n"));
}

#[tokio::test]
async fn a_batch_entry_with_crashes_enough_is_poison_and_not_recorded() {
    let dir = temp_dir();
    let config = config(&dir, "q", 1);
    {
        let tracker = Tracker::open(&config).unwrap();
        std::mem::forget(tracker.begin("p", false).await);
    }
    let tracker = Tracker::open(&config).unwrap();
    let batch = tracker.begin_batch(&[("a", false), ("p", true)]).await;
    assert_eq!(batch[0].poison(), None);
    assert_eq!(batch[1].poison(), Some(1));
    assert!(journal_text(&tracker).ends_with("S a\n"));
    drop(batch);
    // Every permit is gone: a suspect-free begin runs at once.
    assert!(tracker.begin("n", false).await.poison().is_none());
}
