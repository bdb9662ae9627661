"""Custom step modules that specs may use once listed in `settings.DSPEX_CUSTOM_MODULES`.

A Custom step's class is constructed as `cls(signature=<dspy.Signature>, **options)`, where
`signature` is built from the step's `signature`/`instructions` and `options` is the step's
optional `options` object. Its `forward` receives the step's inputs as keyword arguments and
returns a `dspy.Prediction` holding at least the signature's output fields.
"""

import copy

import dspy


class KeywordExtract(dspy.Module):
    """Predict the keywords of the inputs first, then answer with them as an extra input.

    Two predictors, so an optimizer can tune each: `extract` (inputs -> keywords) and
    `respond` (inputs, keywords -> the signature's outputs). The prediction also carries
    `keywords`.
    """

    def __init__(self, signature: type[dspy.Signature], max_keywords: int = 5) -> None:
        super().__init__()
        if "keywords" in signature.fields:
            raise ValueError("KeywordExtract adds a `keywords` field itself; rename that field")
        if not isinstance(max_keywords, int) or not 1 <= max_keywords <= 50:
            raise ValueError("max_keywords must be an integer between 1 and 50")
        self.max_keywords = max_keywords
        extract_fields = {
            **copy.deepcopy(signature.input_fields),
            "keywords": (list[str], dspy.OutputField(desc=f"at most {max_keywords} key terms of the input")),
        }
        self.extract = dspy.Predict(dspy.Signature(extract_fields, "Extract the key terms of the input."))
        self.respond = dspy.Predict(
            signature.append("keywords", dspy.InputField(desc="key terms of the input"), type_=list[str])
        )

    def forward(self, **inputs: object) -> dspy.Prediction:
        keywords = [str(keyword) for keyword in self.extract(**inputs).keywords][: self.max_keywords]
        prediction = self.respond(**inputs, keywords=keywords)
        return dspy.Prediction(keywords=keywords, **prediction)
