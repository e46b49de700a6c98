//! A TCP echo server and a bulk echo client, for traffic through SSH port forwards in the
//! lab (`tests/tests/stall.rs`).
//!
//! * `sshgw-echo serve ADDR`: echoes every connection back to itself until its EOF.
//! * `sshgw-echo send ADDR INPUT OUTPUT`: connects (retrying while the forward comes up),
//!   sends INPUT while writing what comes back to OUTPUT, half-closes after INPUT, and exits
//!   0 once the echo ends. Both directions run at once.

use std::fs::File;
use std::io::{self, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// How long `send` keeps retrying the connect (the forward may still be starting).
const CONNECT_RETRY: Duration = Duration::from_secs(30);

fn serve(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    eprintln!("listening on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            let mut reader = match stream.try_clone() {
                Ok(r) => r,
                Err(_) => return,
            };
            let mut writer = stream;
            let _ = io::copy(&mut reader, &mut writer);
            let _ = writer.shutdown(Shutdown::Write);
        });
    }
    Ok(())
}

fn connect(addr: &str) -> io::Result<TcpStream> {
    let started = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => return Ok(stream),
            Err(e) if started.elapsed() < CONNECT_RETRY => {
                eprintln!("connect {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

fn send(addr: &str, input: &str, output: &str) -> io::Result<()> {
    let stream = connect(addr)?;
    let mut writer = stream.try_clone()?;
    let mut source = File::open(input)?;
    let sender = std::thread::spawn(move || -> io::Result<u64> {
        let sent = io::copy(&mut source, &mut writer)?;
        writer.shutdown(Shutdown::Write)?;
        Ok(sent)
    });
    let mut reader = stream;
    let mut sink = File::create(output)?;
    let received = io::copy(&mut reader, &mut sink)?;
    sink.flush()?;
    let sent = sender
        .join()
        .map_err(|_| io::Error::other("sender thread panicked"))??;
    eprintln!("sent {sent} bytes, received {received}");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[1..] {
        ["serve", addr] => serve(addr),
        ["send", addr, input, output] => send(addr, input, output),
        _ => {
            eprintln!("usage: sshgw-echo serve ADDR | sshgw-echo send ADDR INPUT OUTPUT");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("sshgw-echo: {e}");
        std::process::exit(1);
    }
}
