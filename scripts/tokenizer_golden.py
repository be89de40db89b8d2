"""Golden ids for the tokenizer fixture, from Python's sentencepiece (the reference).

Regenerate (needs `pip install sentencepiece==0.2.1`; CI does not):
    python3 scripts/tokenizer_golden.py chameleon-data/tests/fixtures/tokenizer
"""

import json
import sys
from pathlib import Path

import sentencepiece as spm

TEXTS = [
    "To be, or not to be: that is the question.",
    "  leading and  double  spaces, trailing  ",
    "Lines\nand\ttabs\n\n",
    "Ünïcödé, emoji 🦎 and CJK 变色龙, digits 0123456789",
    "Good night, sweet prince, and flights of angels sing thee to thy rest!",
]


def main(folder: str) -> None:
    folder = Path(folder)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    cases = [{"text": t, "ids": sp.encode(t), "pieces": sp.encode(t, out_type=str)} for t in TEXTS]
    names = [sp.id_to_piece(i) for i in range(len(sp))]
    out = {"sentencepiece": spm.__version__, "pieces": names, "cases": cases}
    (folder / "golden.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
