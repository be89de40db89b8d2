#![no_main]
chameleon_fuzz::target!("html");
