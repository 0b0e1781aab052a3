use super::*;

#[test]
fn commands_parse() {
    assert_eq!(
        Command::parse("power-loss"),
        Ok(Command::PowerLoss {
            seed: None,
            torn: false
        })
    );
    assert_eq!(
        Command::parse("power-loss --torn --seed 7"),
        Ok(Command::PowerLoss {
            seed: Some(7),
            torn: true
        })
    );
    assert_eq!(Command::parse(" status "), Ok(Command::Status));
    assert_eq!(Command::parse("clear"), Ok(Command::Clear));
    assert_eq!(Command::parse("disk-full on"), Ok(Command::DiskFull(true)));
    assert_eq!(
        Command::parse("io-errors off"),
        Ok(Command::IoErrors(false))
    );
}

#[test]
fn bad_commands_are_refused() {
    assert_eq!(Command::parse(""), Err(ParseError::Empty));
    assert_eq!(
        Command::parse("reboot"),
        Err(ParseError::Unknown("reboot".into()))
    );
    assert_eq!(
        Command::parse("power-loss --seed x"),
        Err(ParseError::BadArgument("x".into()))
    );
    assert_eq!(
        Command::parse("status now"),
        Err(ParseError::BadArgument("now".into()))
    );
    assert_eq!(
        Command::parse("disk-full maybe"),
        Err(ParseError::BadArgument("maybe".into()))
    );
}

#[test]
fn the_socket_answers_each_line() {
    let dir = tempfile::tempdir().unwrap();
    let backing = Arc::new(Mutex::new(Backing::new(dir.path(), 1 << 20).unwrap()));
    let sock = dir.path().join("ctl.sock");
    serve(&sock, backing).unwrap();
    assert_eq!(
        send(&sock, "status").unwrap(),
        "ok unsynced_files=0 unsynced_bytes=0 unsynced_dir_ops=0 pending_bytes=0 disk_full=false io_errors=false"
    );
    assert!(send(&sock, "bogus")
        .unwrap()
        .starts_with("err unknown command"));
    assert!(send(&sock, "power-loss --seed 3")
        .unwrap()
        .starts_with("ok seed=3 "));
}
