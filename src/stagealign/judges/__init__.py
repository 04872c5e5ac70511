from stagealign.judges.base import CallableJudge, Judge, JudgeError, bradley_terry, load_callable

__all__ = ["CallableJudge", "Judge", "JudgeError", "bradley_terry", "load_callable"]
