#![no_main]
chameleon_fuzz::target!("tar");
