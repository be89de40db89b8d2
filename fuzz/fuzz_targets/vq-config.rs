#![no_main]
chameleon_fuzz::target!("vq-config");
