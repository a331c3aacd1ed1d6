"""Answer / reference pairs for the math grader: (response's final answer, ground truth, must match).

Kept as data so that the table reads at a glance. Traps are pairs that look alike and must not match,
and known Math-Verify false positives that the grader has to refuse.
"""

MATCH = [
    ("\\boxed{12}", "12"), ("\\boxed{ 12 }", "12"), ("\\boxed{-7}", "-7"), ("\\boxed{0}", "0"),
    ("\\boxed{3.5}", "3.5"), ("\\boxed{\\frac{1}{2}}", "0.5"), ("\\boxed{0.5}", "\\frac{1}{2}"),
    ("\\boxed{\\frac{29}{35}}", "\\frac{29}{35}"), ("\\boxed{29/35}", "\\frac{29}{35}"),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}"), ("\\boxed{\\tfrac{3}{4}}", "0.75"),
    ("\\boxed{x = 3}", "3"), ("\\boxed{x=-2}", "-2"), ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}"), ("\\boxed{\\pi}", "\\pi"),
    ("\\boxed{2\\pi}", "2\\pi"), ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2"), ("\\boxed{1000}", "1,000"),
    ("\\boxed{1{,}000}", "1000"), ("\\boxed{10^3}", "1000"), ("\\boxed{2^{10}}", "1024"),
    ("\\boxed{(1, 2)}", "(1,2)"), ("\\boxed{\\{1, 2, 3\\}}", "\\{3, 2, 1\\}"),
    ("\\boxed{[0, 1]}", "[0,1]"), ("\\boxed{(-\\infty, 2)}", "(-\\infty,2)"),
    ("\\boxed{x^2 + 2x + 1}", "(x+1)^2"), ("\\boxed{2x}", "x+x"), ("\\boxed{\\frac{6}{8}}", "\\frac{3}{4}"),
    ("\\boxed{-\\frac{1}{3}}", "-1/3"), ("\\boxed{\\frac{-1}{3}}", "-\\frac{1}{3}"), ("\\boxed{1.25}", "5/4"),
    ("\\boxed{\\sqrt{16}}", "4"), ("\\boxed{e^{0}}", "1"), ("\\boxed{\\log_2 8}", "3"),
    ("\\boxed{3}", "3.0"), ("\\boxed{50\\%}", "50\\%"), ("\\boxed{\\text{5}}", "5"),
    ("\\boxed{5 \\text{ apples}}", "5"), ("\\boxed{28}", "28"), ("\\boxed{-16}", "-16"),
    ("The answer is \\boxed{7}.", "7"), ("so we get \\boxed{42} as the result", "42"),
    ("\\boxed{7} and again \\boxed{7}", "7"), ("\\boxed{\\boxed{9}}", "9"),
    ("\\boxed{\\left(\\frac{1}{2}\\right)}", "1/2"), ("\\boxed{0.333333}", "1/3"),
    ("\\boxed{\\frac{22}{7}}", "22/7"), ("\\boxed{a+b}", "b+a"), ("\\boxed{2(x+1)}", "2x+2"),
    ("\\boxed{\\sqrt{3}}", "3^{1/2}"), ("\\boxed{12586269025}", "12586269025"),
    ("\\boxed{-0}", "0"), ("\\boxed{+5}", "5"), ("\\boxed{\\frac{10}{2}}", "5"),
    ("the answer is 7", "7"), ("7", "7"), ("I get 3 + 4 = 7, so 7.", "7"),
]

NO_MATCH = [
    ("\\boxed{13}", "12"), ("\\boxed{-12}", "12"), ("\\boxed{1/2}", "1/3"), ("\\boxed{0.51}", "1/2"),
    ("\\boxed{\\frac{29}{36}}", "\\frac{29}{35}"), ("\\boxed{x = 4}", "3"),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}"),
    ("\\boxed{2\\pi}", "\\pi"), ("\\boxed{(2, 1)}", "(1,2)"), ("\\boxed{[0, 1)}", "[0,1]"),
    ("\\boxed{(0, 1)}", "[0,1]"), ("\\boxed{\\{1, 2\\}}", "\\{1, 2, 3\\}"), ("\\boxed{x^2+1}", "(x+1)^2"),
    ("\\boxed{100}", "1000"), ("\\boxed{2^{11}}", "1024"), ("\\boxed{3.3}", "10/3"),
    ("\\boxed{e}", "\\pi"), ("\\boxed{7}", "-7"), ("\\boxed{0}", "1"), ("\\boxed{1}", "0"),
    ("\\boxed{3} or \\boxed{4}", "3"), ("\\boxed{3} or \\boxed{4}", "4"),
    ("\\boxed{12} wait no \\boxed{13}", "13"), ("", "5"), ("no idea", "5"),
    ("\\boxed{}", "5"), ("\\boxed{5", "6"), ("\\boxed{a-b}", "b-a"), ("\\boxed{2x}", "x+2"),
    ("\\boxed{12586269024}", "12586269025"), ("\\boxed{1.0001}", "1"), ("\\boxed{999}", "1000"),
    ("\\boxed{-\\frac{1}{3}}", "1/3"), ("\\boxed{\\frac{3}{4}}", "4/3"), ("\\boxed{0.75}", "3/5"),
    ("\\boxed{5 \\text{ apples}}", "6"), ("\\boxed{\\infty}", "1000000"), ("\\boxed{50}", "0.5"),
    ("\\boxed{\\frac{1}{2}x}", "2x"), ("\\boxed{\\sqrt{16}}", "2"),
    # Known false-positive traps: factorials compared by float tolerance, equations parsed to [0].
    ("\\boxed{20!+1}", "20!"), ("\\boxed{x+1=1}", "y+2=2"),
]
