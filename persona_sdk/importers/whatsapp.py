def detect(text: str) -> bool:
    return False


def parse(text, where):
    raise NotImplementedError
