#![no_main]
chameleon_fuzz::target!("jsonl-interleaved");
