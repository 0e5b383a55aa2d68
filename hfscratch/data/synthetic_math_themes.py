"""Story themes, names and percentages of the synthetic math generator (`synthetic_math`): data, not logic.

Changing any entry changes the generated corpus (and so the prepared-data fingerprints of every user).
"""

from __future__ import annotations

from typing import Any

# Placeholders: {P} subject name, {p} he/she, {pos} his/her, {obj} him/her, {F} a friend,
# {Q} a new person (ages), {unit}, {thing}; numbers {a} (current value), {b}, {k}, {m}, {pct};
# results {c} (the new value) and {t} (an intermediate result) render as "x op y = <<x op y=r>>r".
# Each event kind is a list of (question sentence, solution line) pairs.
THEMES: dict[str, dict[str, Any]] = {
    "collection": {
        "units": ["marbles", "stickers", "trading cards", "seashells", "stamps", "apples", "pebbles", "comic books"],
        "start": ["{P} has {a} {unit}.", "{P} collects {unit} and owns {a} of them.", "There are {a} {unit} in {P}'s box."],
        "add": [("{P} finds {b} more {unit}.", "{P} now has {c} {unit}."),
                ("{F} gives {obj} {b} {unit}.", "After the gift {p} has {c} {unit}."),
                ("{P} buys another {b} {unit}.", "That makes {c} {unit}.")],
        "sub": [("{P} gives {b} {unit} to {F}.", "{P} is left with {c} {unit}."),
                ("{P} loses {b} of the {unit}.", "After losing some, {p} has {c} {unit}.")],
        "mul": [("Later {pos} collection grows to {b} times its size.", "The collection grows to {c} {unit}."),
                ("{F} then gives {obj} enough {unit} to make {b} times as many as {p} had.", "Now {p} has {c} {unit}.")],
        "div": [("{P} splits the {unit} equally into {b} boxes and keeps only one box.", "One box holds {c} {unit}."),
                ("{P} keeps only 1/{b} of the {unit} and donates the rest.", "{P} keeps {c} {unit}.")],
        "groups_add": [("{P} buys {k} packs with {m} {unit} in each pack.", "The packs hold {t} {unit}, so {p} has {c} {unit}.")],
        "groups_sub": [("{P} gives {k} friends {m} {unit} each.", "{P} gives away {t} {unit} and keeps {c} {unit}.")],
        "pct_sub": [("{P} trades away {pct}% of the {unit}.", "{pct}% of {a} is {t} {unit}, so {p} keeps {c} {unit}.")],
        "pct_add": [("{P}'s collection then grows by {pct}%.", "{pct}% of {a} is {t} {unit}, so {p} now has {c} {unit}.")],
        "final_div": [("{P} shares all the {unit} equally among {b} friends. How many {unit} does each friend get?",
                       "Each friend gets {c} {unit}.")],
        "final": ["How many {unit} does {P} have now?", "How many {unit} does {P} have at the end?"],
    },
    "baking": {
        "units": ["cookies", "muffins", "cupcakes", "bread rolls", "pancakes", "brownies"],
        "start": ["{P} bakes {a} {unit}.", "{P} has a tray of {a} {unit}."],
        "add": [("{P} bakes another batch of {b} {unit}.", "There are now {c} {unit}."),
                ("{F} brings {b} more {unit}.", "Together they have {c} {unit}.")],
        "sub": [("{P}'s family eats {b} of the {unit}.", "{c} {unit} are left."),
                ("{P} sells {b} {unit} at the bake sale.", "After the sale {p} has {c} {unit}.")],
        "mul": [("For a party, {P} bakes until there are {b} times as many {unit}.", "There are {c} {unit}.")],
        "div": [("{P} packs the {unit} equally into {b} boxes and gives away all but one box.", "One box has {c} {unit}.")],
        "groups_add": [("{P} bakes {k} more trays with {m} {unit} on each tray.", "The trays add {t} {unit}, making {c} {unit}.")],
        "groups_sub": [("{k} neighbours each take {m} {unit}.", "The neighbours take {t} {unit}, leaving {c} {unit}.")],
        "pct_sub": [("{pct}% of the {unit} are eaten at lunch.", "{pct}% of {a} is {t} {unit}, so {c} {unit} are left.")],
        "final_div": [("{P} shares the {unit} equally among {b} friends. How many {unit} does each friend get?",
                       "Each friend gets {c} {unit}.")],
        "final": ["How many {unit} are there now?", "How many {unit} does {P} have at the end?"],
    },
    "money": {
        "units": ["dollars"],
        "things": ["a book", "a toy car", "lunch", "a puzzle", "a scarf", "a board game", "paint"],
        "plural_things": ["notebooks", "pens", "tickets", "sandwiches", "T-shirts", "plants"],
        "start": ["{P} has ${a} in {pos} wallet.", "{P} has saved ${a}.", "{P} starts the week with ${a}."],
        "add": [("{P} earns ${b} mowing lawns.", "{P} now has {c} dollars."),
                ("{F} pays {obj} back ${b}.", "That brings {pos} money to {c} dollars.")],
        "sub": [("{P} spends ${b} on {thing}.", "{P} has {c} dollars left."),
                ("{P} donates ${b} to a charity.", "After the donation {p} has {c} dollars.")],
        "mul": [("By the end of the year {pos} savings have grown to {b} times as much.", "{P} then has {c} dollars.")],
        "div": [("{P} splits the money equally into {b} envelopes and keeps one envelope in {pos} wallet.",
                 "One envelope holds {c} dollars.")],
        "groups_add": [("{P} walks {k} dogs and earns ${m} for each one.", "{P} earns {t} dollars and now has {c} dollars.")],
        "groups_sub": [("{P} buys {k} {things} for ${m} each.", "The {things} cost {t} dollars, so {p} has {c} dollars left.")],
        "pct_sub": [("{P} spends {pct}% of {pos} money on {thing}.", "{pct}% of {a} is {t} dollars, so {p} has {c} dollars left.")],
        "pct_add": [("{P} gets a {pct}% bonus on {pos} money.", "The bonus is {t} dollars, so {p} has {c} dollars.")],
        "final_div": [("{P} shares all of it equally among {b} cousins. How many dollars does each cousin get?",
                       "Each cousin gets {c} dollars.")],
        "final": ["How many dollars does {P} have now?", "How much money, in dollars, does {P} have at the end?"],
    },
    "store": {
        "units": ["shirts", "toys", "books", "lamps", "chairs", "backpacks", "umbrellas"],
        "start": ["A store has {a} {unit} in stock.", "A shop starts the day with {a} {unit}."],
        "add": [("A delivery brings {b} more {unit}.", "The store now has {c} {unit}.")],
        "sub": [("It sells {b} {unit} in the morning.", "After the morning it has {c} {unit}."),
                ("{b} {unit} are returned to the factory.", "That leaves {c} {unit}.")],
        "div": [("The {unit} are split equally among {b} branches and this store keeps one share.",
                 "The store keeps {c} {unit}.")],
        "groups_add": [("It receives {k} boxes with {m} {unit} in each.", "The boxes hold {t} {unit}, so it has {c} {unit}.")],
        "groups_sub": [("{k} customers each buy {m} {unit}.", "The customers buy {t} {unit}, leaving {c} {unit}.")],
        "pct_sub": [("During a sale, {pct}% of the {unit} are sold.", "{pct}% of {a} is {t} {unit}, so {c} {unit} remain.")],
        "pct_add": [("The store increases its stock by {pct}%.", "{pct}% of {a} is {t} {unit}, so the stock becomes {c} {unit}.")],
        "final_div": [("The remaining {unit} are packed equally into {b} crates. How many {unit} go in each crate?",
                       "Each crate holds {c} {unit}.")],
        "final": ["How many {unit} does the store have now?", "How many {unit} are left in the store?"],
    },
    "travel": {
        "units": ["kilometers", "miles"],
        "start": ["{P} is {a} {unit} from home."],
        "start_groups": [("{P} drives away from home at {m} {unit} per hour for {k} hours.", "{P} covers {c} {unit}.")],
        "add": [("{P} then drives {b} more {unit} away from home.", "{P} is now {c} {unit} from home.")],
        "sub": [("{P} then drives {b} {unit} back toward home.", "{P} is now {c} {unit} from home.")],
        "groups_add": [("Next {p} drives away from home for {k} hours at {m} {unit} per hour.",
                        "That adds {t} {unit}, so {p} is {c} {unit} from home.")],
        "groups_sub": [("Then {p} heads back toward home for {k} hours at {m} {unit} per hour.",
                        "That brings {obj} {t} {unit} closer, so {p} is {c} {unit} from home.")],
        "final_div": [("{P} wants to cover that distance back in {b} equal legs. How many {unit} long is each leg?",
                       "Each leg is {c} {unit}.")],
        "final": ["How many {unit} from home is {P} now?", "How far from home, in {unit}, is {P} at the end?"],
    },
    "ages": {
        "units": ["years"],
        "start": ["{P} is {a} years old."],
        "max_result": 110,  # people's ages stay believable whatever max_value says
        "new_subject": True,  # every step introduces a new person whose age depends on the previous one
        "add": [("{Q} is {b} years older than {P}.", "{Q} is {c} years old.")],
        "sub": [("{Q} is {b} years younger than {P}.", "{Q} is {c} years old.")],
        "mul": [("{Q} is {b} times as old as {P}.", "{Q} is {c} years old.")],
        "div": [("{P} is {b} times as old as {Q}.", "{Q} is {c} years old.")],
        "final": ["How old is {P}?", "How many years old is {P}?"],
    },
    "reading": {
        "units": ["pages"],
        "start": ["{P}'s book has {a} pages left to read.", "{P} still has {a} pages of a novel to read."],
        "add": [("{P}'s teacher adds a chapter of {b} pages to the reading.", "Now {c} pages are left.")],
        "sub": [("{P} reads {b} pages on Monday.", "{c} pages are left."),
                ("On the bus {p} reads {b} pages.", "That leaves {c} pages.")],
        "groups_sub": [("Then {p} reads {m} pages a day for {k} days.", "{P} reads {t} pages, so {c} pages are left.")],
        "pct_sub": [("Over the weekend {p} reads {pct}% of the remaining pages.", "{pct}% of {a} is {t} pages, so {c} pages are left.")],
        "final_div": [("{P} wants to finish the rest in {b} days, reading the same number of pages each day. "
                       "How many pages a day must {p} read?", "{P} must read {c} pages a day.")],
        "final": ["How many pages does {P} still have to read?"],
    },
}

NAMES = [("Maya", "she"), ("Liam", "he"), ("Ava", "she"), ("Noah", "he"), ("Zoe", "she"), ("Omar", "he"),
          ("Priya", "she"), ("Kenji", "he"), ("Elena", "she"), ("Mateo", "he"), ("Aisha", "she"), ("Lucas", "he"),
          ("Grace", "she"), ("Tariq", "he"), ("Nora", "she"), ("Felix", "he"), ("Chloe", "she"), ("Samuel", "he"),
          ("Ines", "she"), ("Jonah", "he"), ("Hana", "she"), ("Diego", "he"), ("Lena", "she"), ("Ravi", "he")]
PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "his", "him")}
PERCENTS = (5, 10, 20, 25, 30, 40, 50, 60, 75)
