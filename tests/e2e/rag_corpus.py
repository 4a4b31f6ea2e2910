"""A small labelled corpus for measuring retrieval with the real all-MiniLM-L6-v2 embeddings:
30 short documents on distinct topics, and questions that paraphrase one document each (written
so that words of the answer document are not simply repeated)."""

DOCUMENTS = {
    "volcano": "Volcanoes form where molten rock called magma rises through the Earth's crust and erupts as lava, ash and gas.",
    "photosynthesis": "Photosynthesis lets green plants turn sunlight, water and carbon dioxide into glucose, releasing oxygen.",
    "espresso": "Espresso is brewed by forcing hot water through finely ground coffee beans at about nine bars of pressure.",
    "marathon": "A marathon is a long-distance running race of 42.195 kilometres, first held at the 1896 Athens Olympics.",
    "tides": "Ocean tides are caused mainly by the Moon's gravitational pull on the Earth's oceans, with help from the Sun.",
    "bees": "Honeybees communicate the direction and distance of flowers to their hive mates with a waggle dance.",
    "bread": "Sourdough bread rises because wild yeast and lactic acid bacteria in the starter ferment the dough.",
    "chess": "In chess, castling moves the king two squares toward a rook and places that rook on the other side of the king.",
    "vaccines": "Vaccines train the immune system to recognise a pathogen by exposing it to a harmless antigen first.",
    "bitcoin": "Bitcoin is a decentralised digital currency whose transactions are recorded on a public blockchain ledger.",
    "penguins": "Emperor penguins breed during the Antarctic winter, and the males keep the egg warm on their feet for two months.",
    "rainbow": "A rainbow appears when sunlight is refracted, reflected and dispersed inside raindrops, splitting it into colours.",
    "piano": "A piano makes sound when felt-covered hammers strike steel strings as the keys are pressed.",
    "pyramids": "The Great Pyramid of Giza was built as a tomb for the pharaoh Khufu around 2560 BC.",
    "tcp": "TCP provides reliable, ordered delivery of bytes between programs by numbering segments and retransmitting lost ones.",
    "recycling": "Aluminium cans can be recycled endlessly, and recycling them saves about 95 percent of the energy of new metal.",
    "sleep": "Adults need roughly seven to nine hours of sleep a night; deep sleep helps memory consolidation.",
    "glaciers": "Glaciers are slow rivers of ice that carve U-shaped valleys as they grind over the bedrock.",
    "compost": "Composting turns kitchen scraps and garden waste into fertile soil through decomposition by microbes and worms.",
    "eclipse": "A solar eclipse happens when the Moon passes between the Sun and the Earth and blocks the sunlight.",
    "tea": "Green tea and black tea come from the same plant; black tea leaves are oxidised before drying.",
    "bicycle": "Bicycle gears let the rider change how far the wheel turns with each pedal stroke, easing climbs.",
    "whales": "Blue whales are the largest animals ever known, growing up to 30 metres long and feeding on tiny krill.",
    "passport": "To renew a passport you usually submit an application form, a recent photo, the old passport and a fee.",
    "mortgage": "A mortgage is a loan to buy a house, repaid in monthly instalments of principal plus interest over many years.",
    "lightning": "Lightning is a sudden electrostatic discharge between charged regions of a thunderstorm cloud and the ground.",
    "origami": "Origami is the Japanese art of folding a single square sheet of paper into shapes such as cranes.",
    "antibiotics": "Antibiotics kill bacteria or stop them from multiplying, but they have no effect on viruses like the flu.",
    "jazz": "Jazz grew out of New Orleans in the early twentieth century, blending blues, ragtime and improvisation.",
    "solar-panels": "Solar panels convert sunlight directly into electricity using photovoltaic cells made of silicon.",
}

QUESTIONS = [
    ("What makes lava come out of a mountain?", "volcano"),
    ("How do plants produce their own food from light?", "photosynthesis"),
    ("How is a strong Italian coffee shot made?", "espresso"),
    ("How long is the Olympic long-distance footrace?", "marathon"),
    ("Why does the sea level rise and fall twice a day?", "tides"),
    ("How do insects in a hive tell each other where nectar is?", "bees"),
    ("What makes a naturally leavened loaf rise?", "bread"),
    ("Which move swaps the positions of the king and a rook?", "chess"),
    ("How does an immunisation protect you from disease?", "vaccines"),
    ("What is the cryptocurrency that uses a blockchain?", "bitcoin"),
    ("Which birds incubate eggs on their feet in the coldest continent?", "penguins"),
    ("Why do we see coloured arcs in the sky after rain?", "rainbow"),
    ("How does a keyboard instrument with strings and hammers produce notes?", "piano"),
    ("Who was buried in the biggest Egyptian monument?", "pyramids"),
    ("Which network protocol guarantees that data arrives in order?", "tcp"),
    ("How much energy is saved by reusing drink cans?", "recycling"),
    ("How many hours of rest does a grown-up need each night?", "sleep"),
    ("How do moving ice masses shape mountain valleys?", "glaciers"),
    ("How can I turn food waste into garden soil?", "compost"),
    ("What happens when the Moon hides the Sun?", "eclipse"),
    ("What is the difference between green and black tea?", "tea"),
    ("Why do bikes have gears for going uphill?", "bicycle"),
    ("What is the largest animal on Earth and what does it eat?", "whales"),
    ("What documents do I need to renew my travel document?", "passport"),
    ("How does a home loan get paid back?", "mortgage"),
    ("What causes the flashes of electricity in a storm?", "lightning"),
    ("What is the paper folding craft from Japan?", "origami"),
    ("Why won't penicillin-type drugs cure a cold virus?", "antibiotics"),
]

# A few short documents on one topic, so a question about it retrieves the default top_k (4) of
# them: each is one chunk of about 160 tiny-chat tokens, so four of them alone are more than the
# 512-token window of dev-cpu's chat model (issue 14: RAG must fit its context to the window).
BEE_NOTES = {
    "waggle-dance": "Forager honeybees return to the hive and perform a waggle dance on the comb: the angle of the "
    "straight run against vertical gives the direction of the flowers relative to the sun, and its length the distance.",
    "round-dance": "When flowers are close to the hive, within about fifty metres, honeybees do a round dance instead "
    "of a waggle dance; it says that food is near but not which way, so recruits search around the hive.",
    "nectar-scent": "Honeybees also share the scent of the flowers they visited: hive mates touch the dancer with "
    "their antennae and smell the nectar she brought back, then look for flowers with that same scent outside.",
    "sun-compass": "Honeybees navigate with the sun as a compass and correct for its movement across the sky during "
    "the day; on cloudy days they use the pattern of polarised light that still reaches them through the clouds.",
    "hive-roles": "A honeybee colony has one queen that lays the eggs, thousands of female workers that forage, nurse "
    "and build comb, and a few hundred male drones whose only task is to mate with a queen from another colony.",
}
BEE_QUESTION = "How do honeybees tell each other where the flowers are?"
