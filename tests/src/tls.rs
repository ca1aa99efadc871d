//! The TLS provider and HTTP clients of the tests.

/// Installs the `ring` rustls provider for the test's own HTTP clients (the vault installs
/// one itself when it builds its client). reqwest is built with `rustls-no-provider`, so even
/// plain `http://` clients need one.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client that does not follow redirects (to read a 302's `Location`).
pub fn client_without_redirects() -> reqwest::Client {
    install_tls_provider();
    match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => panic!("the test HTTP client does not build: {e}"),
    }
}
