//! The layer against what another user could plant: each test builds the
//! trap in a temp dir and checks the refusal (and that nothing blocked).
#![allow(clippy::disallowed_methods)] // tests: their own temp dirs

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;

use super::*;

const NEW: NewFile = NewFile {
    mode: 0o640,
    owner: None,
};

fn fifo(path: &Path) {
    nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o666)).expect("mkfifo");
}

fn refusal(e: io::Error, words: &str) {
    assert!(is_refusal(&e), "not a refusal: {e}");
    assert!(e.to_string().contains(words), "{e}");
}

#[test]
fn a_file_is_read_appended_created_and_renamed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = GuardedDir::open(tmp.path()).expect("open");
    let mut f = dir.open_append("log", NEW).expect("create");
    f.write_all(b"one\n").expect("write");
    let mut f = dir.open_append("log", NEW).expect("open existing");
    f.write_all(b"two\n").expect("write");
    let meta = fs::metadata(tmp.path().join("log")).expect("meta");
    assert_eq!(meta.mode() & 0o777, 0o640);
    let mut text = String::new();
    dir.open_read("log", &Expect::DIR_OWNER_OR_ME)
        .expect("read")
        .read_to_string(&mut text)
        .expect("read");
    assert_eq!(text, "one\ntwo\n");
    dir.rename("log", "log.1").expect("rename");
    assert_eq!(dir.entries().expect("list"), vec![OsString::from("log.1")]);
    dir.remove_file("log.1").expect("rm");
    dir.remove_file("log.1").expect("gone already is fine");
}

#[test]
fn a_symlink_in_place_of_a_file_is_refused_and_its_target_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let target = tmp.path().join("precious");
    fs::write(&target, "precious\n").expect("write");
    symlink(&target, tmp.path().join("log")).expect("symlink");
    let dir = GuardedDir::open(tmp.path()).expect("open");
    refusal(
        dir.open_append("log", NEW).expect_err("link"),
        "is a symlink",
    );
    refusal(
        dir.open_read("log", &Expect::DIR_OWNER_OR_ME)
            .expect_err("link"),
        "is a symlink, not a regular file",
    );
    assert_eq!(fs::read_to_string(&target).expect("read"), "precious\n");
}

#[test]
fn a_hard_link_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let target = tmp.path().join("precious");
    fs::write(&target, "precious\n").expect("write");
    fs::hard_link(&target, tmp.path().join("log")).expect("link");
    let dir = GuardedDir::open(tmp.path()).expect("open");
    refusal(
        dir.open_append("log", NEW).expect_err("hard link"),
        "2 names",
    );
    refusal(
        dir.open_read("log", &Expect::DIR_OWNER_OR_ME)
            .expect_err("hard link"),
        "a hard link",
    );
    assert_eq!(fs::read_to_string(&target).expect("read"), "precious\n");
}

#[test]
fn a_fifo_is_refused_at_once_for_reading_and_writing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fifo(&tmp.path().join("log"));
    let dir = GuardedDir::open(tmp.path()).expect("open");
    let started = Instant::now();
    refusal(
        dir.open_append("log", NEW).expect_err("fifo"),
        "is a FIFO, not a regular file",
    );
    refusal(
        dir.open_read("log", &Expect::DIR_OWNER_OR_ME)
            .expect_err("fifo"),
        "is a FIFO, not a regular file",
    );
    assert!(started.elapsed() < Duration::from_secs(2), "blocked");
}

#[test]
fn a_directory_or_socket_in_place_of_a_file_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::create_dir(tmp.path().join("log")).expect("mkdir");
    let _sock =
        std::os::unix::net::UnixListener::bind(tmp.path().join("sock")).expect("bind socket");
    let dir = GuardedDir::open(tmp.path()).expect("open");
    refusal(
        dir.open_append("log", NEW).expect_err("dir"),
        "is a directory",
    );
    refusal(
        dir.open_read("log", &Expect::DIR_OWNER_OR_ME)
            .expect_err("dir"),
        "is a directory, not a regular file",
    );
    refusal(
        dir.open_append("sock", NEW).expect_err("socket"),
        "is a socket",
    );
    refusal(
        dir.open_read("sock", &Expect::DIR_OWNER_OR_ME)
            .expect_err("socket"),
        "is a socket",
    );
}

#[test]
fn a_too_big_or_sparse_file_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let f = fs::File::create(tmp.path().join("big")).expect("create");
    f.set_len(1 << 30).expect("sparse 1 GiB");
    fs::write(tmp.path().join("small"), vec![1u8; 4096]).expect("write");
    let dir = GuardedDir::open(tmp.path()).expect("open");
    let capped = Expect {
        owned: Owned::ByDirOwnerOrMe,
        max_size: Some(1 << 20),
        dense: false,
    };
    refusal(
        dir.open_read("big", &capped).expect_err("too big"),
        "over the limit",
    );
    let dense = Expect {
        max_size: Some(2 << 30),
        dense: true,
        ..capped
    };
    refusal(
        dir.open_read("big", &dense).expect_err("sparse"),
        "is sparse",
    );
    dir.open_read("small", &dense).expect("small and dense");
}

#[test]
fn a_file_of_another_owner_is_refused_when_an_owner_is_expected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("f"), "x").expect("write");
    let dir = GuardedDir::open(tmp.path()).expect("open");
    let me = nix::unistd::geteuid().as_raw();
    let theirs = Expect {
        owned: Owned::By(me.wrapping_add(1)),
        max_size: None,
        dense: false,
    };
    refusal(
        dir.open_read("f", &theirs).expect_err("owner"),
        "belongs to uid",
    );
}

#[test]
fn a_component_replaced_by_a_symlink_in_a_writable_dir_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let open = tmp.path().join("open");
    fs::create_dir(&open).expect("mkdir");
    // Another user could write `open/` (world-writable, like a service's dir).
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).expect("chmod");
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).expect("mkdir");
    symlink(&elsewhere, open.join("sub")).expect("symlink");
    refusal(
        GuardedDir::open(&open.join("sub")).expect_err("link in a writable dir"),
        "which another user can write",
    );
    refusal(
        GuardedDir::open_or_create(&open.join("sub/deeper"), 0o700, None)
            .expect_err("link in a writable dir"),
        "refusing to follow it",
    );
    assert!(!elsewhere.join("deeper").exists());
    let dir = GuardedDir::open(&open).expect("open");
    refusal(
        dir.subdir("sub").expect_err("a link"),
        "is a symlink, not a directory",
    );
    // A link in a directory only we can write is ours: followed.
    fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).expect("chmod");
    let sub = GuardedDir::open(&open.join("sub")).expect("trusted link");
    sub.open_append("f", NEW)
        .expect("write through our own link");
    assert!(elsewhere.join("f").exists());
}

#[test]
fn directories_are_created_with_their_mode_and_removed_without_following_links() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("a/b/leaf");
    let (dir, created) = GuardedDir::open_or_create(&path, 0o700, None).expect("create");
    assert!(created);
    assert_eq!(fs::metadata(&path).expect("meta").mode() & 0o777, 0o700);
    let (_, again) = GuardedDir::open_or_create(&path, 0o700, None).expect("open");
    assert!(!again);
    // A tree with a link to a file and a directory outside it.
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    fs::write(outside.join("keep"), "keep").expect("write");
    let inner = dir.make_dir("inner", NEW).expect("mkdirat");
    inner
        .create_new("f", NEW, OFlag::empty())
        .expect("create_new");
    let exists = inner
        .create_new("f", NEW, OFlag::empty())
        .expect_err("exists");
    assert_eq!(exists.kind(), io::ErrorKind::AlreadyExists, "{exists}");
    symlink(&outside, path.join("inner/out")).expect("symlink");
    symlink(outside.join("keep"), path.join("keep")).expect("symlink");
    let parent = GuardedDir::open(&tmp.path().join("a/b")).expect("open");
    parent.remove_tree("leaf").expect("remove_tree");
    assert!(!path.exists());
    assert_eq!(
        fs::read_to_string(outside.join("keep")).expect("kept"),
        "keep"
    );
    parent.remove_tree("leaf").expect("gone already is fine");
}

#[test]
fn a_foreign_entry_is_moved_aside() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fifo(&tmp.path().join("log"));
    let dir = GuardedDir::open(tmp.path()).expect("open");
    let aside = dir.move_aside("log").expect("aside");
    assert_eq!(aside, OsString::from("log.refused-1"));
    dir.open_append("log", NEW).expect("a fresh file");
}

#[test]
fn layout_directories_are_created_once_with_their_mode() {
    use crate::protocol::layout::{Dir, DirOwner, Layout};
    let root = tempfile::tempdir().expect("tempdir");
    let layout = Layout::new(root.path(), "svc");
    let created: Vec<bool> = layout
        .directories()
        .iter()
        .map(|d| create_missing(d).expect("create").1)
        .collect();
    assert!(created.iter().all(|c| *c), "{created:?}");
    for d in layout.directories() {
        let mode = fs::metadata(&d.path).expect("stat").mode() & 0o7777;
        assert_eq!(mode, d.mode, "{}", d.path.display());
        assert!(!create_missing(&d).expect("again").1, "created twice");
    }
    assert_eq!(layout.directory(Dir::Log).owner, DirOwner::Service);
    assert_eq!(layout.directory(Dir::Run).owner, DirOwner::Agent);
    assert_eq!(layout.directory(Dir::CdsDump).owner, DirOwner::Agent);
}

#[test]
fn a_layout_directory_planted_as_a_link_in_a_writable_parent_is_refused() {
    use crate::protocol::layout::{Dir, Layout};
    let root = tempfile::tempdir().expect("tempdir");
    let layout = Layout::new(root.path(), "svc");
    let log = layout.directory(Dir::Log);
    let parent = log.path.parent().expect("parent");
    fs::create_dir_all(parent).expect("mkdir");
    // /var/log writable by a group (as Ubuntu's is, for syslog).
    fs::set_permissions(parent, fs::Permissions::from_mode(0o775)).expect("chmod");
    let victim = root.path().join("etc");
    fs::create_dir(&victim).expect("mkdir");
    symlink(&victim, &log.path).expect("symlink");
    refusal(
        create_missing(&log).expect_err("planted link"),
        "refusing to follow it",
    );
}

#[test]
fn a_path_with_dot_dot_reaches_the_physical_parent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(tmp.path().join("a/b")).expect("mkdir");
    fs::write(tmp.path().join("a/f"), "here").expect("write");
    let dir = GuardedDir::open(&tmp.path().join("a/b/..")).expect("open");
    let mut text = String::new();
    dir.open_read("f", &Expect::DIR_OWNER_OR_ME)
        .expect("read")
        .read_to_string(&mut text)
        .expect("read");
    assert_eq!(text, "here");
}
