use super::records::*;
use super::*;
use chrono::{TimeZone, Utc};

fn instance(name: &str) -> InstanceRecord {
    let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    InstanceRecord {
        name: name.into(),
        instance_type: "container".into(),
        architecture: "x86_64".into(),
        config: [("limits.cpu".to_string(), "1".to_string())].into(),
        devices: Default::default(),
        profiles: vec!["default".into()],
        ephemeral: false,
        stateful: false,
        description: String::new(),
        created_at: t,
        last_used_at: t,
        location: String::new(),
    }
}

fn profile(name: &str) -> ProfileRecord {
    ProfileRecord {
        name: name.into(),
        description: String::new(),
        config: Default::default(),
        devices: Default::default(),
    }
}

#[test]
fn create_read_update_delete_instance() {
    let db = Db::open_in_memory().unwrap();
    db.apply_unreplicated(&[Command::CreateInstance(instance("c1"))])
        .unwrap();
    assert_eq!(
        db.instance("c1").unwrap().unwrap().config["limits.cpu"],
        "1"
    );

    let mut i = instance("c1");
    i.description = "web".into();
    db.apply_unreplicated(&[Command::UpdateInstance(i)])
        .unwrap();
    assert_eq!(db.instance("c1").unwrap().unwrap().description, "web");

    db.apply_unreplicated(&[Command::DeleteInstance { name: "c1".into() }])
        .unwrap();
    assert!(db.instance("c1").unwrap().is_none());
}

#[test]
fn duplicate_create_is_exists_and_missing_update_is_not_found() {
    let db = Db::open_in_memory().unwrap();
    db.apply_unreplicated(&[Command::CreateInstance(instance("c1"))])
        .unwrap();
    assert!(matches!(
        db.apply_unreplicated(&[Command::CreateInstance(instance("c1"))]),
        Err(DbError::Exists(_))
    ));
    assert!(matches!(
        db.apply_unreplicated(&[Command::UpdateInstance(instance("nope"))]),
        Err(DbError::NotFound(_))
    ));
}

#[test]
fn apply_all_is_atomic() {
    let db = Db::open_in_memory().unwrap();
    let r = db.apply_unreplicated(&[
        Command::CreateInstance(instance("a")),
        Command::DeleteInstance {
            name: "missing".into(),
        },
    ]);
    assert!(r.is_err());
    assert!(
        db.instance("a").unwrap().is_none(),
        "first command rolled back"
    );
}

#[test]
fn rename_instance_moves_its_snapshots() {
    let db = Db::open_in_memory().unwrap();
    db.apply_unreplicated(&[Command::CreateInstance(instance("c1"))])
        .unwrap();
    let i = instance("c1");
    db.apply_unreplicated(&[Command::CreateSnapshot(SnapshotRecord {
        instance: "c1".into(),
        name: "snap0".into(),
        architecture: i.architecture,
        config: i.config,
        devices: i.devices,
        profiles: i.profiles,
        ephemeral: false,
        stateful: false,
        description: String::new(),
        created_at: i.created_at,
        expires_at: None,
    })])
    .unwrap();
    db.apply_unreplicated(&[Command::RenameInstance {
        from: "c1".into(),
        to: "c2".into(),
    }])
    .unwrap();
    assert!(db.instance("c1").unwrap().is_none());
    assert_eq!(db.instance("c2").unwrap().unwrap().name, "c2");
    let snaps = db.snapshots("c2").unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].instance, "c2");
}

#[test]
fn rename_profile_updates_instances_that_use_it() {
    let db = Db::open_in_memory().unwrap();
    db.apply_unreplicated(&[Command::CreateProfile(profile("default"))])
        .unwrap();
    db.apply_unreplicated(&[Command::CreateInstance(instance("c1"))])
        .unwrap();
    db.apply_unreplicated(&[Command::RenameProfile {
        from: "default".into(),
        to: "base".into(),
    }])
    .unwrap();
    assert_eq!(db.instance("c1").unwrap().unwrap().profiles, vec!["base"]);
    assert!(db.profile("base").unwrap().is_some());
}

#[test]
fn volatile_keys_change_alone() {
    let db = Db::open_in_memory().unwrap();
    db.apply_unreplicated(&[Command::CreateInstance(instance("c1"))])
        .unwrap();
    db.apply_unreplicated(&[Command::SetInstanceVolatile {
        name: "c1".into(),
        key: "volatile.last_state.power".into(),
        value: Some("RUNNING".into()),
    }])
    .unwrap();
    let i = db.instance("c1").unwrap().unwrap();
    assert_eq!(i.config["volatile.last_state.power"], "RUNNING");
    assert_eq!(i.config["limits.cpu"], "1");
}

#[test]
fn state_survives_reopen_and_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.db");
    {
        let db = Db::open(&path).unwrap();
        db.apply_unreplicated(&[Command::SetServerConfig {
            key: "core.https_address".into(),
            value: Some("127.0.0.1:8443".into()),
        }])
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    assert_eq!(
        db.server_config().unwrap()["core.https_address"],
        "127.0.0.1:8443"
    );
    drop(db);

    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 999).unwrap();
    drop(conn);
    assert!(matches!(Db::open(&path), Err(DbError::TooNew { .. })));
}

#[test]
fn commands_round_trip_through_json() {
    // The Raft log will carry commands serialized; they must survive it unchanged.
    let cmd = Command::CreateInstance(instance("c1"));
    let s = serde_json::to_string(&cmd).unwrap();
    let back: Command = serde_json::from_str(&s).unwrap();
    assert_eq!(cmd, back);
}

#[test]
fn deleting_an_image_drops_its_aliases() {
    let db = Db::open_in_memory().unwrap();
    let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    db.apply_unreplicated(&[Command::CreateImage(ImageRecord {
        fingerprint: "abc".into(),
        filename: "x.tar.gz".into(),
        size: 1,
        architecture: "x86_64".into(),
        image_type: "container".into(),
        public: false,
        auto_update: false,
        cached: false,
        properties: Default::default(),
        profiles: vec![],
        created_at: t,
        uploaded_at: t,
        expires_at: None,
        last_used_at: None,
    })])
    .unwrap();
    db.apply_unreplicated(&[Command::CreateAlias(AliasRecord {
        name: "bb".into(),
        target: "abc".into(),
        description: String::new(),
    })])
    .unwrap();
    assert_eq!(db.images_by_prefix("ab").unwrap().len(), 1);
    db.apply_unreplicated(&[Command::DeleteImage {
        fingerprint: "abc".into(),
    }])
    .unwrap();
    assert!(db.alias("bb").unwrap().is_none());
}

#[test]
fn every_resource_applier_takes_its_commands() {
    // Command::resource() is written by hand: a variant sent to the wrong file would be
    // refused as "not a … command". Apply the variants the other tests do not.
    let db = Db::open_in_memory().unwrap();
    let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let pool = PoolRecord {
        name: "p".into(),
        driver: "dir".into(),
        description: String::new(),
        config: Default::default(),
        ..PoolRecord::default()
    };
    let cert = CertificateRecord {
        fingerprint: "f".into(),
        name: "ci".into(),
        cert_type: "client".into(),
        certificate: "PEM".into(),
        restricted: false,
        projects: vec![],
        description: String::new(),
    };
    let mut changed_pool = pool.clone();
    changed_pool.description = "changed".into();
    let mut changed_cert = cert.clone();
    changed_cert.name = "ci2".into();
    db.apply_unreplicated(&[
        Command::CreatePool(pool),
        Command::UpdatePool(changed_pool.clone()),
        Command::AddCertificate(cert),
        Command::UpdateCertificate(changed_cert.clone()),
        Command::CreateToken(TokenRecord {
            secret: "s".into(),
            client_name: "c".into(),
            operation_id: "op".into(),
            created_at: t,
            expires_at: None,
            restricted: false,
            projects: vec![],
        }),
        Command::CreateJoinToken(JoinTokenRecord {
            name: "node2".into(),
            secret: "j".into(),
            operation_id: "op2".into(),
            expires_at: t,
        }),
        Command::CreateAlias(AliasRecord {
            name: "a".into(),
            target: "x".into(),
            description: String::new(),
        }),
        Command::UpdateAlias(AliasRecord {
            name: "a".into(),
            target: "y".into(),
            description: "d".into(),
        }),
        Command::RenameAlias {
            from: "a".into(),
            to: "b".into(),
        },
    ])
    .unwrap();
    assert_eq!(db.pool("p").unwrap(), Some(changed_pool));
    assert_eq!(db.certificate("f").unwrap(), Some(changed_cert));
    assert!(db.token("s").unwrap().is_some());
    assert!(db.join_token("node2").unwrap().is_some());
    assert_eq!(db.alias("b").unwrap().map(|a| a.target), Some("y".into()));
    db.apply_unreplicated(&[
        Command::DeletePool { name: "p".into() },
        Command::DeleteCertificate {
            fingerprint: "f".into(),
        },
        Command::DeleteToken { secret: "s".into() },
        Command::DeleteJoinToken {
            name: "node2".into(),
        },
        Command::DeleteAlias { name: "b".into() },
    ])
    .unwrap();
    assert!(db.pools().unwrap().is_empty());
    assert!(db.certificates().unwrap().is_empty());
    assert!(db.tokens().unwrap().is_empty());
    assert!(db.aliases().unwrap().is_empty());
}

#[test]
fn a_misrouted_command_is_refused() {
    let db = Db::open_in_memory().unwrap();
    let mut conn = db.lock();
    let tx = conn.transaction().unwrap();
    let r = super::members::apply(
        &tx,
        &Command::DeleteProfile {
            name: "default".into(),
        },
    );
    assert!(matches!(r, Err(DbError::Misrouted(_))), "{r:?}");
}

#[test]
fn networks_are_created_updated_and_deleted_by_commands() {
    let db = Db::open_in_memory().unwrap();
    let net = NetworkRecord {
        name: "br1".into(),
        kind: "bridge".into(),
        description: String::new(),
        config: [("ipv4.address".to_string(), "10.9.0.1/24".to_string())].into(),
        ..NetworkRecord::default()
    };
    db.apply_unreplicated(&[Command::CreateNetwork(net.clone())])
        .unwrap();
    assert!(matches!(
        db.apply_unreplicated(&[Command::CreateNetwork(net.clone())]),
        Err(DbError::Exists(_))
    ));
    let mut changed = net.clone();
    changed.config.insert("ipv4.nat".into(), "true".into());
    db.apply_unreplicated(&[Command::UpdateNetwork(changed.clone())])
        .unwrap();
    assert_eq!(db.network("br1").unwrap(), Some(changed));
    assert_eq!(db.networks().unwrap().len(), 1);
    db.apply_unreplicated(&[Command::DeleteNetwork { name: "br1".into() }])
        .unwrap();
    assert!(db.networks().unwrap().is_empty());
    assert!(matches!(
        db.apply_unreplicated(&[Command::DeleteNetwork { name: "br1".into() }]),
        Err(DbError::NotFound(_))
    ));
}
