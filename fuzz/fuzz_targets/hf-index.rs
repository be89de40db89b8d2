#![no_main]
chameleon_fuzz::target!("hf-index");
