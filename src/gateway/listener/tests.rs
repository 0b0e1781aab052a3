use super::*;

#[test]
fn ipv6_sources_are_64_bit_prefixes_and_mapped_v4_is_v4() {
    let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(source_of(a), source_of(b));
    assert_ne!(source_of(a), source_of(c));
    let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
    assert_eq!(source_of(mapped), source_of(IpAddr::from([10, 1, 2, 3])));
}

#[test]
fn admission_counts_per_source_and_releases_on_drop() {
    let limits = ListenerLimits {
        connections_max: 3,
        connections_per_ip: 2,
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
    };
    let adm = Admission::new(&limits);
    let one = IpAddr::from([10, 0, 0, 1]);
    let two = IpAddr::from([10, 0, 0, 2]);
    let a = adm.admit(one);
    let b = adm.admit(one);
    assert!(matches!(a, Admit::Yes(_)) && matches!(b, Admit::Yes(_)));
    assert!(matches!(
        adm.admit(one),
        Admit::Refuse(_, Refusal::SourceFull)
    ));
    let c = adm.admit(two);
    assert!(matches!(c, Admit::Yes(_)));
    assert!(matches!(
        adm.admit(two),
        Admit::Refuse(_, Refusal::NodeFull)
    ));
    drop(a);
    assert!(matches!(adm.admit(one), Admit::Yes(_)));
    drop((b, c));
    assert!(adm.per_source.lock().len() <= 1);
}
