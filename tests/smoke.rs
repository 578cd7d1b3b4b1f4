mod common;

#[test]
fn serves_base_endpoint() {
    let s = common::Server::start();
    let r = common::client().get(format!("{}/v2/", s.url)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");
}
