//! A fault-injecting TCP proxy: forwards connections to a server and cuts
//! each one (both directions, both sockets shut down) once the client has
//! sent (or, started with [`CuttingProxy::start_down`], received) a random
//! number of bytes through it, drawn from a seeded
//! generator so a failing run can be repeated. It cuts at most a given
//! number of connections; connections that end before their cut point
//! pass untouched (a `HEAD`, a TLS handshake), and once the budget is
//! spent every connection passes. The bytes forwarded towards the server
//! are recorded per connection. A gate, when given, is called before each
//! connection is passed on, and holds it until the gate returns.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What happened on one proxied connection.
#[derive(Debug, Clone, Default)]
pub struct Conn {
    /// Bytes forwarded from the client to the server.
    pub up: u64,
    /// Bytes forwarded from the server to the client.
    pub down: u64,
    /// Where it was to be cut, if anywhere.
    pub cut_at: Option<u64>,
    /// Whether it was cut.
    pub cut: bool,
}

/// What holds a new connection until it may pass.
type Gate = Arc<dyn Fn() + Send + Sync>;

#[derive(Debug)]
struct State {
    rng: u64,
    cuts_left: usize,
    min: u64,
    max: u64,
    /// Cut on bytes towards the client rather than towards the server.
    downstream: bool,
    conns: Vec<Conn>,
}

impl State {
    /// xorshift64*: enough randomness for cut points, and repeatable.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A running proxy; stops accepting when dropped.
#[derive(Debug)]
pub struct CuttingProxy {
    /// The port clients connect to.
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl CuttingProxy {
    /// Forwards 127.0.0.1:`port` (a new ephemeral port) to
    /// 127.0.0.1:`target`, cutting up to `cuts` connections each after
    /// between `min` and `max` bytes from the client.
    pub fn start(target: u16, cuts: usize, min: u64, max: u64, seed: u64) -> CuttingProxy {
        CuttingProxy::with_direction(target, cuts, min, max, seed, false)
    }

    /// Like [`CuttingProxy::start`], cutting after between `min` and
    /// `max` bytes towards the client (a download).
    pub fn start_down(target: u16, cuts: usize, min: u64, max: u64, seed: u64) -> CuttingProxy {
        CuttingProxy::with_direction(target, cuts, min, max, seed, true)
    }

    /// Like [`CuttingProxy::start_down`], passing each connection on only
    /// once `gate` returns (e.g. once the server has let the last one go).
    pub fn start_down_gated(
        target: u16,
        cuts: usize,
        min: u64,
        max: u64,
        seed: u64,
        gate: impl Fn() + Send + Sync + 'static,
    ) -> CuttingProxy {
        CuttingProxy::with_gate(target, cuts, min, max, seed, true, Some(Arc::new(gate)))
    }

    fn with_direction(
        target: u16,
        cuts: usize,
        min: u64,
        max: u64,
        seed: u64,
        downstream: bool,
    ) -> CuttingProxy {
        CuttingProxy::with_gate(target, cuts, min, max, seed, downstream, None)
    }

    fn with_gate(
        target: u16,
        cuts: usize,
        min: u64,
        max: u64,
        seed: u64,
        downstream: bool,
        gate: Option<Gate>,
    ) -> CuttingProxy {
        assert!(min > 0 && min <= max, "cut range {min}..={max}");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("non-blocking accept");
        let state = Arc::new(Mutex::new(State {
            rng: seed | 1,
            cuts_left: cuts,
            min,
            max,
            downstream,
            conns: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let (st, gate) = (st.clone(), gate.clone());
                        thread::spawn(move || {
                            if let Some(g) = gate {
                                g();
                            }
                            relay(client, target, &st)
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // Accept polls: the proxy must notice its drop.
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => return,
                }
            }
        });
        eprintln!("cutting proxy on port {port}: seed {seed}, {cuts} cuts in {min}..={max} bytes");
        CuttingProxy { port, state, stop }
    }

    /// Every connection so far.
    pub fn conns(&self) -> Vec<Conn> {
        self.state.lock().expect("proxy state").conns.clone()
    }

    /// How many connections were cut.
    pub fn cuts(&self) -> usize {
        self.conns().iter().filter(|c| c.cut).count()
    }

    /// `https://127.0.0.1:PORT/images/{ticket}` through the proxy.
    pub fn image_url(&self, ticket: &str) -> String {
        format!("https://127.0.0.1:{}/images/{ticket}", self.port)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(client: TcpStream, target: u16, state: &Arc<Mutex<State>>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let index = {
        let mut s = state.lock().expect("proxy state");
        let cut_at = (s.cuts_left > 0).then(|| {
            let span = s.max - s.min + 1;
            s.min + s.next() % span
        });
        s.conns.push(Conn {
            cut_at,
            ..Conn::default()
        });
        s.conns.len() - 1
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let downstream = state.lock().expect("proxy state").downstream;
    let st = state.clone();
    let down = thread::spawn(move || pump(s2, c2, &st, index, downstream, false));
    pump(client, server, state, index, !downstream, true);
    let _ = down.join();
}

/// Forwards `from` to `to` until either closes; when `cutting`, cuts the
/// connection at its cut point. `up`: this is the client's direction.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    state: &Arc<Mutex<State>>,
    index: usize,
    cutting: bool,
    up: bool,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut s = state.lock().expect("proxy state");
        let c = &s.conns[index];
        let (done, cut_at) = (if up { c.up } else { c.down }, c.cut_at);
        let pass = match cut_at {
            Some(at) if cutting && !c.cut && s.cuts_left > 0 && done + n as u64 >= at => {
                Some((at - done) as usize)
            }
            _ => None,
        };
        let k = pass.unwrap_or(n);
        if pass.is_some() {
            s.cuts_left -= 1;
            s.conns[index].cut = true;
        }
        if up {
            s.conns[index].up += k as u64;
        } else {
            s.conns[index].down += k as u64;
        }
        drop(s);
        if to.write_all(&buf[..k]).is_err() || pass.is_some() {
            let _ = to.flush();
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
