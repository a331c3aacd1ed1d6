"""Generate the demo query set in data/demo/ (deterministic: fixed seed; the output is committed).

    python data/make_demo.py            # rewrite data/demo/*.jsonl

Math problems climb from one-digit sums to word problems, fractions and linear equations, so small
teachers show a real spread of pass rates. Coding problems come with stdin/stdout or assert tests. A few
deliberately dirty rows (case and spacing duplicates, a URL, a Markdown table, an eval question in
disguise) make the ingest report show every rule at work.
"""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

SEED = 20250424
OUT = Path(__file__).resolve().parent / "demo"

NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "coins", "shells", "cards"]


LEVELS = 10
# Problems per split (train and eval alike) of each kind: most of the one-step kinds, where the
# tiny recipe's teachers are right often enough to teach (measured with bench/measure_models.py),
# and a few of each harder kind, which give the pass-rate histograms their far end.
PER_SPLIT = {1: 30, 2: 30, 3: 30, 4: 30, 5: 30, 6: 30, 7: 6, 8: 6, 9: 6, 10: 6}


def math_problem(rng: random.Random, level: int) -> tuple[str, str]:
    """A problem of one of ten kinds, easiest first: the first five are one step on small numbers,
    where the bundled models are right some of the time (the pass rates that make CV informative);
    the last five are the harder kinds they mostly miss."""
    if level == 1:
        a, b = rng.randint(1, 12), rng.randint(1, 9)
        return f"What is {a} + {b}?", str(a + b)
    if level == 2:
        a, b = rng.randint(5, 18), rng.randint(1, 9)
        a, b = max(a, b), min(a, b)
        return f"What is {a} - {b}?", str(a - b)
    if level == 3:
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        return f"What is {a} \\times {b}?", str(a * b)
    if level == 4:
        a, b = rng.randint(11, 89), rng.randint(1, 9)
        return f"What is {a} + {b}?", str(a + b)
    if level == 5:
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return (f"{name} has {a} {item} and finds {b} more. How many {item} does {name} have now?",
                str(a + b))
    if level == 6:
        a, b = rng.randint(20, 99), rng.randint(10, 99)
        a, b = max(a, b), min(a, b)
        op = rng.choice(["+", "-"])
        return f"What is {a} {op} {b}?", str(a + b if op == "+" else a - b)
    if level == 7:
        a, b = rng.randint(12, 99), rng.randint(3, 9)
        return f"What is {a} \\times {b}?", str(a * b)
    if level == 8:
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        a, b, c, d = rng.randint(3, 20), rng.randint(2, 6), rng.randint(3, 9), rng.randint(1, 10)
        q = (f"{name} has {a} {item}. {name} buys {b} packs with {c} {item} in each pack, "
             f"then gives away {d} {item}. How many {item} does {name} have now?")
        return q, str(a + b * c - d)
    if level == 9:
        x, a = rng.randint(-9, 12), rng.randint(2, 9)
        b = rng.randint(-20, 20)
        c = a * x + b
        sign = "+" if b >= 0 else "-"
        return f"Solve for $x$: ${a}x {sign} {abs(b)} = {c}$.", str(x)
    p, q, r, s = rng.randint(1, 7), rng.randint(2, 9), rng.randint(1, 7), rng.randint(2, 9)
    total = Fraction(p, q) + Fraction(r, s)
    answer = str(total.numerator) if total.denominator == 1 else (
        f"\\frac{{{total.numerator}}}{{{total.denominator}}}")
    return (f"Compute $\\frac{{{p}}}{{{q}}} + \\frac{{{r}}}{{{s}}}$ and give the result as a "
            "fraction in lowest terms.", answer)


def _io(cases: list[tuple[str, str]]) -> dict[str, object]:
    return {"stdin_stdout": [{"input": i, "output": o} for i, o in cases]}


def code_problems(rng: random.Random) -> list[dict[str, object]]:
    """(question, tests, level) for Python tasks; the parameters vary so variants are distinct."""
    out: list[dict[str, object]] = []

    def add(level: int, question: str, tests: dict[str, object]) -> None:
        out.append({"question": question, "test_cases": tests, "level": level})

    for k in rng.sample(range(2, 10), 3):
        add(1, f"Write a Python program that reads one integer n from standard input and prints "
               f"n multiplied by {k}.",
            _io([(f"{n}\n", f"{n * k}\n") for n in (0, 3, -4, 11)]))
    add(1, "Write a Python program that reads two integers, one per line, from standard input and "
           "prints their sum.", _io([("2\n3\n", "5\n"), ("-7\n7\n", "0\n"), ("100\n23\n", "123\n")]))
    add(1, "Write a Python program that reads a line of text and prints it reversed.",
        _io([("hello\n", "olleh\n"), ("abc def\n", "fed cba\n"), ("x\n", "x\n")]))
    for fn, expr, cases in [
        ("square", "n * n", (0, 3, -5, 12)),
        ("cube", "n ** 3", (0, 2, -3, 5)),
        ("double_plus_one", "2 * n + 1", (0, 4, -2, 9)),
    ]:
        checks = "\n".join(f"    assert candidate({n}) == {eval(expr, {'n': n})}" for n in cases)
        add(2, f"Write a Python function `{fn}(n)` that returns {expr} for an integer n.",
            {"assert": f"def check(candidate):\n{checks}\n\ncheck({fn})\n"})
    add(2, "Write a Python function `count_vowels(s)` that returns how many of the characters of s "
           "are vowels (a, e, i, o, u, upper or lower case).",
        {"assert": "assert count_vowels('hello') == 2\nassert count_vowels('') == 0\n"
                   "assert count_vowels('AEIOUxyz') == 5\n"})
    add(3, "Write a Python function `is_prime(n)` that returns True when the integer n is prime and "
           "False otherwise.",
        {"assert": "assert [n for n in range(-3, 30) if is_prime(n)] == "
                   "[2, 3, 5, 7, 11, 13, 17, 19, 23, 29]\nassert is_prime(7919)\n"
                   "assert not is_prime(7917)\n"})
    add(3, "Write a Python program that reads an integer n and prints the numbers from 1 to n, one "
           "per line, but prints Fizz for multiples of 3, Buzz for multiples of 5 and FizzBuzz for "
           "multiples of both.",
        _io([("5\n", "1\n2\nFizz\n4\nBuzz\n"),
             ("15\n", "1\n2\nFizz\n4\nBuzz\nFizz\n7\n8\nFizz\nBuzz\n11\nFizz\n13\n14\nFizzBuzz\n")]))
    add(3, "Write a Python function `fib(n)` that returns the n-th Fibonacci number, with fib(0) = 0 "
           "and fib(1) = 1.",
        {"assert": "assert [fib(i) for i in range(10)] == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]\n"
                   "assert fib(50) == 12586269025\n"})
    add(4, "Write a Python program that reads a line of space-separated integers and prints the "
           "second largest distinct value, or None if there is none.",
        _io([("3 1 4 1 5\n", "4\n"), ("7 7 7\n", "None\n"), ("-1 -2\n", "-2\n")]))
    add(4, "Write a Python function `balanced(s)` that returns True when every bracket in s ((), [], "
           "{}) is closed in the right order, ignoring other characters.",
        {"assert": "assert balanced('([]{})')\nassert not balanced('([)]')\nassert balanced('a(b)c')\n"
                   "assert not balanced('((')\nassert balanced('')\n"})
    add(5, "Write a Python function `longest_increasing(xs)` that returns the length of the longest "
           "strictly increasing subsequence of the list xs.",
        {"assert": "assert longest_increasing([10, 9, 2, 5, 3, 7, 101, 18]) == 4\n"
                   "assert longest_increasing([]) == 0\nassert longest_increasing([5, 5, 5]) == 1\n"
                   "assert longest_increasing(list(range(200))) == 200\n"})
    return out


CHAT = [
    "Explain in two sentences why the sky looks blue.",
    "Give three tips for keeping a houseplant alive.",
    "Write a short, friendly note thanking a neighbour for watering my garden.",
    "What is the difference between weather and climate?",
    "Suggest a name for a small bakery that sells sourdough bread, and say why.",
    "Summarise the rules of tic-tac-toe for a child.",
]


def build() -> dict[str, list[dict[str, object]]]:
    rng = random.Random(SEED)
    math_rows: list[dict[str, object]] = []
    seen: set[str] = set()
    for level in range(1, LEVELS + 1):
        made, per_split = 0, PER_SPLIT[level]
        while made < 2 * per_split:
            q, a = math_problem(rng, level)
            if q in seen:
                continue
            seen.add(q)
            split = "eval" if made % 2 else "train"
            math_rows.append({"question": q, "answer": a, "level": level, "split": split,
                              "source": f"demo-math-l{level}"})
            made += 1
    code_rows = []
    for i, p in enumerate(code_problems(rng)):
        split = "eval" if i % 5 == 4 else "train"
        code_rows.append({**p, "split": split, "source": f"demo-code-l{p['level']}"})
    chat_rows = [{"question": q, "source": "demo-chat"} for q in CHAT]

    # Dirty rows: each one exercises an ingest rule and must not survive it.
    first = math_rows[0]["question"]
    an_eval = next(r for r in math_rows if r["split"] == "eval" and r["level"] == 8)
    dirty = [
        {"question": f"  {str(first).upper()}  ", "answer": math_rows[0]["answer"], "split": "train"},
        {"question": str(an_eval["question"]).replace("How many", "Now how many"),
         "answer": an_eval["answer"], "split": "train"},
        {"question": "What is 6 + 1? See https://example.com/hint", "answer": "7", "split": "train"},
        {"question": "Sum the column:\n| a | b |\n|---|---|\n| 1 | 2 |", "answer": "3",
         "split": "train"},
        {"question": "", "answer": "0", "split": "train"},
        {"question": "\u2603\u2604\u2605\u2606\u2607 \U0001F600\U0001F601\U0001F602", "answer": "0",
         "split": "train"},
    ]
    for row in dirty:
        row["source"] = "demo-dirty"
    return {"math": math_rows + dirty, "code": code_rows, "chat": chat_rows}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in build().items():
        with (OUT / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{OUT / name}.jsonl: {len(rows)} rows")


if __name__ == "__main__":
    main()
