//! A TCP proxy in front of a test server, whose connections can all be cut at once: a
//! server that goes away under a running job, as the job sees it.

/// A TCP proxy to the test server whose connections can all be cut at once.
pub struct Proxy {
    pub port: u16,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    pub fn start(to: u16) -> Proxy {
        Proxy::start_on(0, to)
    }

    /// A proxy listening on `port` (0: any free one).
    pub fn start_on(port: u16, to: u16) -> Proxy {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let streams = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                streams
                    .lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, open }
    }

    /// Cuts every connection made so far; new ones go through.
    pub fn cut(&self) -> usize {
        let streams: Vec<_> = self.open.lock().unwrap().drain(..).collect();
        for stream in &streams {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        streams.len() / 2
    }
}

impl Proxy {
    /// `url` with its port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let mut parsed = url::Url::parse(url).expect("a URL");
        parsed.set_port(Some(self.port)).expect("a URL with a port");
        parsed.to_string()
    }
}
